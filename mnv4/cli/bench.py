"""`mnv4 bench` (export and measure), `mnv4 bench-artifacts` (measure artifacts exported elsewhere, no PyTorch)
and `mnv4 report` (merge machines)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..artifact.formats import FORMATS, RUNTIMES, TORCH
from ..artifact.precisions import PRECISIONS
from ..errors import MNV4Error, ParityFailed
from ..text import printable
from .common import XNNPACK_FP16_HELP, AllowModified, Variant, Verbose, XnnpackFp16, parse_list, warn

CPU = tuple(dict.fromkeys(row.runtimes[0] for row in FORMATS.values()))
Threads = Annotated[str, typer.Option("--threads", help="Comma-separated CPU thread counts, e.g. 1,2.")]
Warmup = Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")]
Repeats = Annotated[int, typer.Option("--repeats", help="Fresh processes per row (latency pools their calls).")]
Latency = Annotated[str, typer.Option("--latency", help=(
    "The latency the report uses: median (over all timed calls) or paper (the MobileNetV4 paper's: the median over "
    "the --repeats processes of each one's mean)."))]
Iterations = Annotated[int | None, typer.Option("--iterations", help="Timed calls (default: time by --min-seconds).")]
MinSeconds = Annotated[float, typer.Option("--min-seconds", help="Time each row for at least this long (and 10 calls).")]
Strict = Annotated[bool, typer.Option("--strict", help="Exit 1 when any row failed or breaches parity (for CI).")]
MachineName = Annotated[str | None, typer.Option(
    "--machine-name", help="The machine's name in reports (default: host-os-arch).")]
Paths = Annotated[list[Path], typer.Argument(
    help="Exported artifacts, or folders of them, each with its manifest and stored reference.")]
Runtimes = Annotated[str, typer.Option("--runtimes", help=(
    f"Comma-separated runtimes: cpu (each format's own: {', '.join(CPU)}), and beyond the CPU "
    f"{', '.join(name for name in RUNTIMES if name not in CPU)} (on software devices here: parity, and latency that "
    "is not representative)."))]
BenchOutput = Annotated[Path, typer.Option("--output-dir", "-o", help="Where results.json and the reports go.")]


def bench(
    context: typer.Context,
    variant: Variant = "conv_small",
    formats: Annotated[str, typer.Option("--formats", help=f"Comma-separated: {', '.join([*FORMATS, TORCH])}.")]
    = ",".join([*FORMATS, TORCH]),
    runtimes: Runtimes = "cpu",
    precisions: Annotated[str, typer.Option("--precisions", help=f"Comma-separated: {', '.join(PRECISIONS)}.")]
    = ",".join(name for name, row in PRECISIONS.items() if row.artifact),
    threads: Threads = "1",
    batch: Annotated[str | None, typer.Option(
        "--batch", help="Comma-separated batch sizes (default: 1; CUDA: 1,8,64,256).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, or cuda for the PyTorch CUDA rows.")] = "cpu",
    warmup: Warmup = 10,
    repeats: Repeats = 1,
    latency: Latency = "median",
    iterations: Iterations = None,
    min_seconds: MinSeconds = 2.0,
    weights: Annotated[Path | None, typer.Option(
        "--weights", "-w", help="Checkpoint (default: seeded offline weights).")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", "-r", help="Input resolution.")] = None,
    compare_timm: Annotated[bool, typer.Option(
        "--compare-timm", help="Also measure timm's model, exported the same way.")] = False,
    output_dir: BenchOutput = Path("bench-results"),
    strict: Strict = False,
    artifacts: Annotated[list[Path] | None, typer.Option(
        "--artifacts", help="The older spelling of `mnv4 bench-artifacts PATHS`. Repeatable.")] = None,
    xnnpack_fp16: Annotated[bool, typer.Option("--xnnpack-fp16", help="With --artifacts: " + XNNPACK_FP16_HELP)] = False,
    machine_name: MachineName = None,
    verbose: Verbose = False,
):
    """Parity and latency of every format and runtime (a fresh process each), next to PyTorch and timm."""
    given = [name for name in context.params if context.get_parameter_source(name).name != "DEFAULT"]
    if artifacts:
        exporting = [f"--{name.replace('_', '-')}" for name in given if name in EXPORTING_OPTIONS]
        if exporting:
            raise MNV4Error(f"{', '.join(exporting)} do not go with bench-artifacts: the artifacts are what is measured")
        return bench_artifacts(artifacts, runtimes, threads, warmup, repeats, latency, iterations, min_seconds,
                               xnnpack_fp16, machine_name, output_dir, strict, False, verbose)
    with_artifacts = [f"--{name.replace('_', '-')}" for name in given if name in ("xnnpack_fp16", "machine_name")]
    if with_artifacts:
        raise MNV4Error(f"{', '.join(with_artifacts)} go with `mnv4 bench-artifacts PATHS`")
    from .common import require_torch

    require_torch("`mnv4 bench`", "or measure artifacts exported elsewhere with `mnv4 bench-artifacts`, which needs none")
    from ..bench.plan import BenchOptions, check_options
    from ..bench.run import bench as run_bench

    options = BenchOptions(
        variant=variant, formats=parse_list(formats), runtimes=parse_list(runtimes), precisions=parse_list(precisions),
        threads=parse_list(threads, int), batches=parse_list(batch, int) if batch else None, device=device,
        repeats=repeats, latency=latency, timing=_timing(warmup, iterations, min_seconds),
        weights=str(weights) if weights else None, resolution=resolution, compare_timm=compare_timm,
        command=shlex.join(["mnv4", *sys.argv[1:]]))
    check_options(options)
    _measure(lambda progress: run_bench(options, output_dir, progress), output_dir, strict, verbose)


# What `mnv4 bench` needs to export the model itself, and so cannot take with --artifacts.
EXPORTING_OPTIONS = ("variant", "formats", "precisions", "batch", "device", "weights", "resolution", "compare_timm")


def bench_artifacts(
    paths: Paths,
    runtimes: Runtimes = "cpu",
    threads: Threads = "1",
    warmup: Warmup = 10,
    repeats: Repeats = 1,
    latency: Latency = "median",
    iterations: Iterations = None,
    min_seconds: MinSeconds = 2.0,
    xnnpack_fp16: XnnpackFp16 = False,
    machine_name: MachineName = None,
    output_dir: BenchOutput = Path("bench-results"),
    strict: Strict = False,
    allow_modified: AllowModified = False,
    verbose: Verbose = False,
):
    """Parity and latency of artifacts exported elsewhere (a fresh process each), judged by their stored references:
    no PyTorch needed (mnv4\\[runtime])."""
    from ..bench.artifacts import ArtifactBenchOptions, check_artifact_options, find_artifacts
    from ..bench.artifacts import bench_artifacts as run_bench_artifacts

    options = ArtifactBenchOptions(runtimes=parse_list(runtimes), threads=parse_list(threads, int), repeats=repeats,
                                   latency=latency,
                                   timing=_timing(warmup, iterations, min_seconds), xnnpack_fp16=xnnpack_fp16,
                                   machine_name=machine_name)
    check_artifact_options(options)
    found = find_artifacts(list(paths), allow_modified)
    warn([change for item in found for change in item.changes])
    _measure(lambda progress: run_bench_artifacts(found, options, output_dir, progress), output_dir, strict, verbose)


def report(
    results: Annotated[list[Path], typer.Argument(help="results.json files from `mnv4 bench` (one per machine).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where report.md and report.html go.")]
    = Path("report"),
):
    """Merge results from several machines into one Markdown + HTML report."""
    from ..bench.report import merge

    markdown, html = merge(results, output_dir)
    typer.echo(f"wrote {markdown} and {html}")


def _timing(warmup: int, iterations: int | None, min_seconds: float):
    from ..bench.worker import Timing

    return Timing(warmup=warmup, iterations=iterations, min_seconds=min_seconds)


def _measure(measure, output_dir: Path, strict: bool, verbose: bool) -> None:
    """Run a bench under a progress bar, say what it wrote, and (with --strict) fail on its failed rows."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..artifact.files import claimed
    from ..bench.results import Status, strict_failures
    from ..chatter import captured, terminal

    stream = terminal()
    console = Console(file=stream)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with claimed(output_dir, "the output folder"), Progress(*columns, console=console) as progress, \
            captured(not verbose, shown_to=stream):
        task = progress.add_task("starting", total=None)
        results = measure(lambda text, done, total: progress.update(task, description=escape(printable(text)),
                                                                    completed=done, total=total))
    rows = results["rows"]
    console.print(f"[green]wrote[/green] {escape(printable(output_dir / 'results.json'))}, report.md, report.html: "
                  f"{len(rows)} rows, {sum(row['status'] == Status.OK for row in rows)} ok")
    failures = strict_failures(results)
    if strict and failures:
        raise ParityFailed(failures)
    warn(failures)
