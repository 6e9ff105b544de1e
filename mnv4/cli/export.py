"""`mnv4 export`: a variant to one format, or all of them, each proven in its own runtime."""
from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated

import typer

from ..artifact.formats import FORMATS
from ..artifact.options import OPTIONS, ExportRequest
from ..errors import MNV4Error, ParityFailed, unknown_value
from ..text import printable
from .common import Variant, Verbose, emit_json, require_torch


def export_command(
    format: Annotated[str, typer.Option(
        "--format", "-f", help=f"{', '.join(FORMATS)} or all (every format that computes the precision).")] = "tflite",
    variant: Variant = "conv_small",
    weights: Annotated[Path | None, typer.Option(
        "--weights", "-w",
        help="Checkpoint to export. Default: reproducible seeded weights, BatchNorm calibrated on photos.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Artifact path (with --format all: a folder). Default: a name in the current folder.")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Class names, one per line, recorded in the manifest (`mnv4 run` prints them).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing artifact.")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip running the artifact against PyTorch.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the manifest(s) as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output and no summary.")] = False,
    verbose: Verbose = False,
    **options,
):
    """Export a variant to ONNX, ORT, TFLite, ExecuTorch, Core ML or OpenVINO and prove it computes what PyTorch does."""
    require_torch("`mnv4 export`")
    from ..export.pipeline import check_request

    if format != "all" and format not in FORMATS:
        raise MNV4Error(unknown_value("format", format, [*FORMATS, "all"]))
    request = ExportRequest(variant=variant, weights=weights, labels=labels, verify=not no_verify, **options)
    # all: every format that computes the precision (ORT has no fp16, only TFLite and Core ML have int8-weights)
    formats = [name for name, row in FORMATS.items() if request.precision in row.precisions] if format == "all" \
        else [format]
    for fmt in formats:
        check_request(fmt, request)
    targets = {fmt: (output / f"{fmt}{FORMATS[fmt].suffix}" if output and format == "all" else output) for fmt in formats}
    manifests, failures = _export_each(request, targets, force, quiet, verbose)
    if json_output:
        emit_json(manifests if format == "all" else (manifests[0] if manifests else {}))
    if failures:
        raise ParityFailed(failures)


def _with_the_option_table(command):
    """`command` with one keyword parameter per row of the option table (its flag, aliases and help; the type and
    default of ExportRequest's field of that name) in place of its **options."""
    hints = typing.get_type_hints(ExportRequest)
    defaults = {field.name: field.default for field in dataclasses.fields(ExportRequest)}
    table = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name],
                               annotation=Annotated[hints[name], typer.Option(row.flag, *row.aliases,
                                                                              help=row.describe())])
             for name, row in OPTIONS.items()]
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for parameter in signature.parameters.values() if parameter.kind != inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*own, *table])
    return command


export_command = _with_the_option_table(export_command)


def _export_each(request: ExportRequest, targets: dict[str, Path | None], force: bool, quiet: bool,
                 verbose: bool) -> tuple[list[dict], list[str]]:
    """Each format's export with a progress line and its summary; the manifests written and the parity failures
    (an artifact that fails is not published, and the other formats still export)."""
    from rich.console import Console
    from rich.markup import escape

    from ..artifact.summary import delegation_lines, parity_line, quantization_lines, shipped_runtime_lines
    from ..chatter import captured, terminal
    from ..export.pipeline import export

    stream = terminal()
    console = Console(file=stream, quiet=quiet)
    manifests, failures = [], []
    for fmt, target in targets.items():
        with console.status(f"{fmt}: starting") as status, captured(not verbose, shown_to=stream):
            try:
                manifest = export(fmt, request, target, force,
                                  step=lambda message, fmt=fmt: status.update(f"{fmt}: {message}"))
            except ParityFailed as failed:
                failures += failed.failures
                continue
        manifests.append(manifest.as_dict())
        if not quiet:
            console.print(f"[green]wrote[/green] {escape(printable(manifest.artifact))} ({manifest.bytes / 1e6:.1f} MB, "
                          f"exported in {manifest.export_seconds:.1f} s)")
            for line in [*quantization_lines(manifest), *delegation_lines(manifest), parity_line(manifest.parity),
                         *shipped_runtime_lines(manifest.parity)]:
                print(printable(line), file=stream)
    return manifests, failures
