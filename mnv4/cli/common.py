"""What several commands share: their options, declared once as `Annotated` types, and small helpers."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..artifact.formats import FORMATS
from ..artifact.options import MAX_THREADS, OPTIONS
from ..errors import MissingExtraError, MNV4Error
from ..text import printable

VARIANT_HELP = "Model variant (see `mnv4 info --help`): conv_small, conv_medium, conv_large, hybrid_medium, ..."
XNNPACK_FP16_HELP = ("TFLite: XNNPACK computes in float16 where the CPU has float16 arithmetic (as phones do); "
                     "judged by the float16-arithmetic limits.")

Variant = Annotated[str, typer.Option("--variant", "-v", help=VARIANT_HELP)]
Resolution = Annotated[int | None, typer.Option("--resolution", "-r", help=OPTIONS["resolution"].help)]
Weights = Annotated[Path | None, typer.Option("--weights", "-w", help="A checkpoint (.safetensors/.pth/.bin).")]
Threads = Annotated[int, typer.Option("--threads", help=f"Runtime threads (1 to {MAX_THREADS}).")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", help="Show the toolchains' and runtimes' own output (shown anyway when a step fails).")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
XnnpackFp16 = Annotated[bool, typer.Option("--xnnpack-fp16", help=XNNPACK_FP16_HELP)]
RUNTIMES_HELP = "; ".join(f"{row.label}: {', '.join(row.runtimes)}" for row in FORMATS.values() if len(row.runtimes) > 1)
Runtime = Annotated[str | None, typer.Option("--runtime", help=(
    f"Where to run it (default: its format's CPU runtime). Beyond the CPU ({RUNTIMES_HELP}): a mobile GPU delegate "
    f"and browsers, on software devices here (bash scripts/install_system.sh installs them)."))]
Artifact = Annotated[Path, typer.Argument(help="An exported artifact with its manifest beside it.")]
Top = Annotated[int, typer.Option("--top", "-k", min=1, max=1000, help="How many classes to print.")]
AllowModified = Annotated[bool, typer.Option(
    "--allow-modified", help="Use an artifact or a manifest that changed after its export, as it is (a warning says "
    "what changed); without it they are refused.")]


def require_torch(command: str, instead: str = "") -> None:
    """A command that builds the PyTorch model, refused in one line on a runtime-only install (mnv4[runtime]),
    saying what to use `instead` where there is something."""
    from ..extras import torch_installed

    if not torch_installed():
        raise MissingExtraError(f"PyTorch, which {command} needs,", "torch", instead)


def check_threads(threads: int) -> int:
    OPTIONS["threads"].check_value(threads)
    return threads


def parse_list(text: str, convert=str) -> tuple:
    """A comma-separated option value as a tuple; a value that does not convert is a one-line error."""
    try:
        return tuple(convert(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise MNV4Error(f"expected a comma-separated list of numbers, got {text!r}") from None


def runner_options(xnnpack_fp16: bool) -> dict:
    """The runner keywords that options ask for (only those set, so every runner takes them)."""
    return {"xnnpack_fp16": True} if xnnpack_fp16 else {}


def stderr_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(printable(line), err=True)


def warn(warnings: list[str]) -> None:
    stderr_lines([f"warning: {warning}" for warning in warnings])


# Whether this command printed its JSON document: `main` prints an error object where it did not (--json).
printed_json: list[bool] = []


def emit_json(document) -> None:
    """The command's one JSON document on stdout (--json)."""
    import json

    typer.echo(json.dumps(document, indent=2))
    printed_json.append(True)
