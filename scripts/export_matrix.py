"""Export every variant x format x precision, verify each, and print the Markdown table for docs/export.md.

    python scripts/export_matrix.py --output-dir artifacts/matrix [--variants conv_small,hybrid_medium] [--fixture]

--fixture exports mnv4's trained fixture of each variant (`mnv4 fixture`: the digits, at 64 px) instead of the
seeded weights, and adds each artifact's held-out top-1 against PyTorch float32's. Rows that fail are recorded
with their reason and the run goes on; results also go to matrix.json."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from mnv4.artifact.formats import FORMATS
from mnv4.artifact.precisions import ARTIFACT_PRECISIONS
from mnv4.errors import MNV4Error, ParityFailed
from mnv4.export import ExportRequest, export
from mnv4.model import PAPER_VARIANTS
from mnv4.model.task import Recipe, trained_fixture


def export_row(variant: str, fmt: str, precision: str, folder: Path, weights: Path | None = None,
               resolution: int | None = None) -> dict:
    row = {"variant": variant, "format": fmt, "precision": precision}
    output = folder / f"{variant}_{precision}{FORMATS[fmt].suffix}"
    request = ExportRequest(variant=variant, precision=precision, weights=weights, resolution=resolution)
    try:
        manifest = export(fmt, request, output, force=True)
    except (MNV4Error, ParityFailed) as error:
        return {**row, "status": f"failed: {error}"}
    parity = manifest.parity
    row.update(bytes=manifest.bytes, export_seconds=manifest.export_seconds,
               delegation=manifest.facts.get("delegation"))
    if parity.get("passed") is None:
        return {**row, "status": parity["status"]}
    task = parity.get("task")
    return {**row, "status": "pass" if parity["passed"] else "fail", "tolerance": parity["tolerance"],
            **{key: parity["worst"][key] for key in ("rel_err", "cosine", "top1_agreement", "top5_agreement")},
            "rel_err_float64": parity["worst_float64"]["artifact"]["rel_err"],
            "fp32_rel_err_float64": parity["worst_float64"]["pytorch_fp32"]["rel_err"],
            "failures": parity["failures"],
            **({"task_top1": task["top1"]["artifact"], "task_top1_fp32": task["top1"]["pytorch_fp32"],
                "task_agreement": task["top1_agreement_with_fp32"], "task_loss_points": task["top1_loss_points"]}
               if task else {})}


def markdown(rows: list[dict]) -> str:
    task = any("task_top1" in row for row in rows)
    lines = ["| variant | format | precision | status | rel err | vs float64 (fp32 itself) | min cosine | top-1 | top-5 | "
             + ("held-out top-1 (fp32) | lost (points) | agrees with fp32 | " if task else "")
             + "size (MB) | export (s) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if task else "") + "---:|---:|"]
    for row in rows:
        metrics = (f"{row['rel_err']:.1e} | {row['rel_err_float64']:.1e} ({row['fp32_rel_err_float64']:.1e}) | "
                   f"{row['cosine']:.6f} | {row['top1_agreement']:.0%} | {row['top5_agreement']:.0%}"
                   if "rel_err" in row else "– | – | – | – | –")
        if task:
            metrics += (f" | {row['task_top1']:.1%} ({row['task_top1_fp32']:.1%}) | {row['task_loss_points']:.1f} | "
                        f"{row['task_agreement']:.1%}" if "task_top1" in row else " | – | – | –")
        size = f"{row['bytes'] / 1e6:.1f}" if "bytes" in row else "–"
        seconds = f"{row['export_seconds']:.1f}" if "export_seconds" in row else "–"
        status = row["status"].split(":")[0]  # the reason stays in matrix.json
        lines.append(f"| {row['variant']} | {row['format']} | {row['precision']} | {status} | {metrics} | "
                     f"{size} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(PAPER_VARIANTS))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--precisions", default=",".join(ARTIFACT_PRECISIONS))
    parser.add_argument("--output-dir", type=Path, default=Path("artifacts/matrix"))
    parser.add_argument("--fixture", action="store_true", help="export the trained fixtures (the digits, 64 px)")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants.split(","):
        weights = trained_fixture(variant) if args.fixture else None
        resolution = Recipe(variant).resolution if args.fixture else None
        for fmt in args.formats.split(","):
            for precision in [p for p in args.precisions.split(",") if p in FORMATS[fmt].precisions]:
                rows.append(export_row(variant, fmt, precision, args.output_dir, weights, resolution))
                print(json.dumps(rows[-1]), flush=True)
    (args.output_dir / "matrix.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                              "rows": rows}, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
