"""The speed claims of docs/bench.md, measured: conv_small, fp32, batch 1, 1 thread, our artifacts next to
timm's from the same toolchains and PyTorch eager, `mnv4 bench` run three times (each row in two fresh
processes per run; ours/timm from two more processes per pair, one per load order, that time both call by
call).

    python scripts/bench_conv_small.py [--output-dir bench-results/conv_small] [--runs 3]

Prints the Markdown table recorded in docs/bench.md and checks the two claims: our best artifact is at least
3x faster than PyTorch eager (NCHW), and each of our artifacts is no slower than timm's from the same toolchain
(ours/timm <= 1.0, the median over the runs). Exit code 1 when a claim does not hold."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from mnv4.bench.results import load_results

FORMATS = "onnx,tflite,executorch,torch"  # Core ML latency needs macOS
REQUIRED_SPEEDUP = 3.0


def run_once(folder: Path, min_seconds: float) -> dict:
    subprocess.run([sys.executable, "-m", "mnv4", "bench", "--variant", "conv_small", "--formats", FORMATS,
                    "--precisions", "fp32", "--threads", "1", "--batch", "1", "--compare-timm",
                    "--repeats", "2", "--min-seconds", str(min_seconds), "--output-dir", str(folder)],
                   check=True, stdout=subprocess.DEVNULL)
    return load_results(folder / "results.json")


def _runs(medians: list[float]) -> str:
    return f"{statistics.median(medians):.2f} ({', '.join(f'{value:.2f}' for value in medians)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("bench-results/conv_small"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args()
    runs = [run_once(args.output_dir / f"run{index + 1}", args.min_seconds) for index in range(args.runs)]

    medians: dict[tuple, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for results in runs:
        for row in results["rows"]:
            if row["latency_ms"] and row["status"] == "ok":
                medians.setdefault((row["source"], row["runtime"]), []).append(row["latency_ms"]["median"])
            if row["ratio_vs_timm"] is not None:
                ratios.setdefault(row["runtime"], []).append(row["ratio_vs_timm"])
    eager = statistics.median(medians["mnv4", "torch-eager"])
    machine = runs[0]["machine"]
    print(f"{machine['cpu_model']}, {machine['logical_cores']} logical cores, 1 thread, "
          f"FMA peak {machine['fma_peak_gflops_per_thread']} GFLOP/s per thread; median of {args.runs} runs\n")
    print("| runtime | ours median ms (each run) | timm median ms (each run) | ours/timm, interleaved (each run) | "
          "speed-up vs eager NCHW |")
    print("|---|---|---|---|---:|")
    failures, best = [], 0.0
    for (source, runtime), values in medians.items():
        if source != "mnv4":
            continue
        ours = statistics.median(values)
        peer = medians.get(("timm", runtime))
        ratio = statistics.median(ratios[runtime]) if runtime in ratios else None
        speedup = eager / ours
        if not runtime.startswith("torch"):
            best = max(best, speedup)
            if ratio is not None and ratio > 1.0:
                failures.append(f"{runtime}: ours/timm {ratio:.3f} > 1.0")
        print(f"| {runtime} | {_runs(values)} | {_runs(peer) if peer else '–'} | "
              f"{f'{ratio:.3f} (' + ', '.join(f'{r:.3f}' for r in ratios[runtime]) + ')' if ratio else '–'} | "
              f"{speedup:.2f}x |")
    print(f"\nbest artifact: {best:.2f}x faster than PyTorch eager NCHW (required: {REQUIRED_SPEEDUP}x)")
    if best < REQUIRED_SPEEDUP:
        failures.append(f"best artifact only {best:.2f}x faster than eager")
    for failure in failures:
        print(f"claim does not hold: {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
