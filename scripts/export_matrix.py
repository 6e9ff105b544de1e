"""Export every variant x format x precision, verify each, and print the Markdown table for docs/export.md.

    python scripts/export_matrix.py --output-dir artifacts/matrix [--variants conv_small,hybrid_medium]

Rows that fail are recorded with their reason and the run goes on; results also go to matrix.json."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from mnv4.artifact.formats import FORMATS, PRECISIONS
from mnv4.errors import MNV4Error
from mnv4.export import ExportRequest, VerificationFailed, export
from mnv4.model import PAPER_VARIANTS


def export_row(variant: str, fmt: str, precision: str, folder: Path) -> dict:
    row = {"variant": variant, "format": fmt, "precision": precision}
    output = folder / f"{variant}_{precision}{FORMATS[fmt].suffix}"
    try:
        manifest = export(fmt, ExportRequest(variant=variant, precision=precision), output, force=True)
    except (MNV4Error, VerificationFailed) as error:
        return {**row, "status": f"failed: {error}"}
    parity = manifest.parity
    row.update(bytes=manifest.bytes, export_seconds=manifest.export_seconds,
               delegation=manifest.facts.get("delegation"))
    if parity.get("passed") is None:
        return {**row, "status": parity["status"]}
    return {**row, "status": "pass" if parity["passed"] else "fail", "tolerance": parity["tolerance"],
            **{key: parity["worst"][key] for key in ("rel_err", "cosine", "top1_agreement", "top5_agreement")}}


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | format | precision | status | rel err | min cosine | top-1 | top-5 | size (MB) | export (s) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        metrics = (f"{row['rel_err']:.1e} | {row['cosine']:.6f} | {row['top1_agreement']:.0%} | {row['top5_agreement']:.0%}"
                   if "rel_err" in row else "– | – | – | –")
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
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--output-dir", type=Path, default=Path("artifacts/matrix"))
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants.split(","):
        for fmt in args.formats.split(","):
            for precision in args.precisions.split(","):
                rows.append(export_row(variant, fmt, precision, args.output_dir))
                print(json.dumps(rows[-1]), flush=True)
    (args.output_dir / "matrix.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                              "rows": rows}, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
