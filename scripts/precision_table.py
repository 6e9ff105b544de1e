"""The accuracy x latency table of docs/export.md: every precision of every format, measured by `mnv4 bench`.

    python scripts/precision_table.py [--variant conv_small] [--output-dir bench-results/precisions]

Two bench runs of the same rows (fp32, fp16, int8-weights, int8 of each format, 1 thread, batch 1): one of the
trained fixture (`mnv4 fixture`, the digits at 64 px) for held-out top-1 and its loss against PyTorch float32,
one of the seeded weights at the variant's own resolution for latency, the speed-up over the same format's fp32
in the same run, parity with PyTorch and the artifact's size. Prints the Markdown table; both results.json stay
in the output directory (`mnv4 report` renders them)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mnv4.artifact.formats import FORMATS
from mnv4.artifact.precisions import ARTIFACT_PRECISIONS
from mnv4.bench.results import load_results
from mnv4.model.task import Recipe, trained_fixture


def bench(variant: str, folder: Path, min_seconds: float, *options: str) -> dict:
    subprocess.run([sys.executable, "-m", "mnv4", "bench", "--variant", variant, "--formats", ",".join(FORMATS),
                    "--precisions", ",".join(ARTIFACT_PRECISIONS), "--threads", "1", "--batch", "1", "--min-seconds",
                    str(min_seconds), "--output-dir", str(folder), *options], check=True, stdout=subprocess.DEVNULL)
    return {(row["format"], row["precision"]): row for row in load_results(folder / "results.json")["rows"]
            if row["source"] == "mnv4"}


def accuracy(row: dict | None) -> str:
    task = ((row or {}).get("parity") or {}).get("task") or {}
    if "top1" not in task:
        return "–"
    return f"{task['top1']['artifact']:.1%} ({-task['top1_loss_points']:+.1f})"


def latency(row: dict | None) -> str:
    if not row or not row["latency_ms"]:
        return "–" if not row else row["status"]
    speedup = row.get("speedup_vs_fp32")
    return f"{row['latency_ms']['median']:.2f}" + (f" ({speedup:.2f}x)" if speedup else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="conv_small")
    parser.add_argument("--output-dir", type=Path, default=Path("bench-results/precisions"))
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()
    fixture = trained_fixture(args.variant)
    accuracy_rows = bench(args.variant, args.output_dir / "fixture", 0.5, "--weights", str(fixture),
                          "--resolution", str(Recipe(args.variant).resolution))
    latency_rows = bench(args.variant, args.output_dir / "latency", args.min_seconds)
    results = load_results(args.output_dir / "latency" / "results.json")
    resolution, machine = results["model"]["resolution"], results["machine"]
    dot_product = [flag for flag in machine["isa"] if "vnni" in flag or flag in ("asimddp", "i8mm")]
    print(f"{args.variant}; latency at {resolution} px, 1 thread, batch 1, on {machine['cpu_model']} "
          f"({', '.join(dot_product) or 'no int8 dot-product instructions'})\n")
    print(f"| format | precision | held-out top-1 on the digits (points vs fp32) | median ms at {resolution} px "
          f"(speed-up vs fp32) | cosine vs PyTorch fp32 | size MB | status |")
    print("|---|---|---:|---:|---:|---:|---|")
    for fmt, row_format in FORMATS.items():
        for precision in row_format.precisions:
            timed = latency_rows.get((fmt, precision))
            parity = (timed or {}).get("parity") or {}
            size = f"{timed['artifact_bytes'] / 1e6:.1f}" if timed and timed["artifact_bytes"] else "–"
            statuses = {row["status"] for row in (timed, accuracy_rows.get((fmt, precision))) if row}
            cosine = f"{parity['cosine']:.4f}" if parity else "–"
            print(f"| {fmt} | {precision} | {accuracy(accuracy_rows.get((fmt, precision)))} | {latency(timed)} | "
                  f"{cosine} | {size} | {', '.join(sorted(statuses))} |")

if __name__ == "__main__":
    main()
