"""The `mnv4` command line: a thin layer over the package's functions."""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import typer

from .artifact.formats import COMPUTE_UNITS, DELEGATES, DEPLOYMENT_TARGETS, FORMATS, PRECISIONS, TORCH
from .artifact.parity import MAX_TOP1_LOSS_POINTS
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARITY_FAILED,
    MissingExtraError,
    MNV4Error,
    one_line,
)

app = typer.Typer(
    help="MobileNetV4: reference model, verified exports, parity and latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

VARIANT_HELP = "Model variant (see `mnv4 info --help`): conv_small, conv_medium, conv_large, hybrid_medium, ..."
FORMAT_HELP = f"{', '.join(FORMATS)} or all."
VERBOSE_HELP = "Show the toolchains' and runtimes' own output (shown anyway when a step fails)."
XNNPACK_FP16_HELP = ("TFLite: XNNPACK computes in float16 where the CPU has float16 arithmetic (as phones do); "
                     "judged by the float16-arithmetic limits.")


# What `mnv4 bench` needs to export the model itself, and so cannot take with --artifacts.
EXPORTING_BENCH_OPTIONS = ("variant", "formats", "precisions", "batch", "device", "weights", "resolution",
                           "compare_timm")


def require_torch(command: str) -> None:
    """A command that builds the PyTorch model, refused in one line on a runtime-only install (mnv4[runtime])."""
    from .extras import torch_installed

    if not torch_installed():
        raise MissingExtraError(f"PyTorch, which {command} needs,", "torch")


def runner_options(xnnpack_fp16: bool) -> dict:
    """The runner keywords that options ask for (only those set, so every runner takes them)."""
    return {"xnnpack_fp16": True} if xnnpack_fp16 else {}


def imagenet_class_names() -> list[str]:
    return resources.files("mnv4").joinpath("assets/imagenet_classes.txt").read_text().splitlines()


def print_top_classes(logits, top: int, names: list[str] | None = None) -> None:
    """One line per class, most probable first: rank, name (`names`, else ImageNet's for 1000 classes),
    index, softmax %."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    names = names or (imagenet_class_names() if len(probabilities) == 1000 else None)
    for rank, index in enumerate(np.argsort(-probabilities)[:top], start=1):
        label = names[index] if names else f"class {index}"
        typer.echo(f"{rank}. {label} (index {index}): {probabilities[index] * 100:.2f}%")


@app.command()
def info(
    variant: str = typer.Option(..., "--variant", "-v", help=VARIANT_HELP),
    resolution: int | None = typer.Option(None, "--resolution", "-r", min=32,
                                             help="Input resolution (default: the variant's)."),
):
    """Print parameters, MACs, default resolution, preprocessing and a per-layer table."""
    require_torch("`mnv4 info`")
    from .model.factory import create_model
    from .model.profile import summary

    model = create_model(variant)
    pre = model.preprocessing
    resolution = resolution or pre.resolution
    typer.echo(f"variant: {model.variant}")
    typer.echo(f"default resolution: {pre.resolution}")
    typer.echo(f"preprocessing: resize short side to {pre.resolution} / crop_pct {pre.crop_pct} "
               f"({pre.interpolation}), center crop, mean {pre.mean}, std {pre.std}")
    summary(model, (3, resolution, resolution))


@app.command()
def predict(
    image: Path = typer.Argument(..., help="An image file (JPEG, PNG, ...)."),
    variant: str = typer.Option(..., "--variant", "-v", help=VARIANT_HELP),
    weights: Path | None = typer.Option(
        None, "--weights", "-w", help="Checkpoint (.safetensors/.pth/.bin). Default: timm's, from the local HF cache."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes to print."),
):
    """Print the top-K ImageNet classes for IMAGE, with timm's eval preprocessing."""
    require_torch("`mnv4 predict`")
    import torch

    from .data import load_image
    from .model.factory import create_model

    model = create_model(variant, pretrained=weights if weights is not None else True)
    batch = torch.from_numpy(model.preprocessing(load_image(image))[None])
    with torch.no_grad():
        print_top_classes(model(batch)[0].numpy(), top)


@app.command()
def fixture(
    variant: str = typer.Option("conv_small", "--variant", "-v", help=VARIANT_HELP),
):
    """Train VARIANT on the digits (scikit-learn's, offline), or find it in the cache: the trained checkpoint
    on which reduced precision is judged by accuracy. Prints its path; pass it to export with --weights."""
    require_torch("`mnv4 fixture`")
    from rich.console import Console

    from .chatter import terminal
    from .model.task import Recipe, held_out_accuracy, trained_fixture

    recipe = Recipe(variant)
    with Console(file=terminal()).status("starting") as status:
        path = trained_fixture(variant, recipe, progress=status.update)
    typer.echo(f"{path}  (held-out top-1 {held_out_accuracy(path):.1%}; export it with --weights and "
               f"--resolution {recipe.resolution})")


def _print_parity(parity: dict, stream) -> None:
    if parity.get("passed") is None:
        print(f"  parity: {parity['status']}", file=stream)
        return
    worst, truth = parity["worst"], parity.get("worst_float64")
    verdict = "PASS" if parity["passed"] else "FAIL: " + "; ".join(parity["failures"])
    evidence = (f"; against float64: artifact {truth['artifact']['rel_err']:.1e}, PyTorch fp32 "
                f"{truth['pytorch_fp32']['rel_err']:.1e}, top-1 {truth['artifact']['top1_agreement']:.0%}"
                if truth else "")
    if parity.get("thresholds", {}).get("photos_only"):
        photos = [value["photos"] for key, value in parity.items() if key.startswith("batch_")]
        evidence += (f"; judged on the photos: rel err {max(p['rel_err'] for p in photos):.2e}, cosine "
                     f"{min(p['cosine'] for p in photos):.6f}")
    task = parity.get("task")
    if not task and parity["tolerance"] != "fp32":
        evidence += "; accuracy not measured (for that, export mnv4's trained fixture: `mnv4 fixture`)"
    if task and "top1" in task:
        evidence += (f"; held-out top-1 on the {task['task']} {task['top1']['artifact']:.1%} (PyTorch fp32 "
                     f"{task['top1']['pytorch_fp32']:.1%})")
    elif task:
        evidence += f"; {task['task']} accuracy {task['status']}"
    if parity.get("reference_source"):
        evidence += f"; reference {parity['reference_source']}"
    print(f"  parity on {parity['inputs']['photos']} photos + {parity['inputs']['random']} random inputs: "
          f"rel err {worst['rel_err']:.2e}, max |d| {worst['max_abs']:.2e}, cosine {worst['cosine']:.6f}, "
          f"top-1 {worst['top1_agreement']:.0%}, top-5 {worst['top5_agreement']:.0%} vs PyTorch fp32"
          f"{evidence} -> {verdict}", file=stream)


def _print_quantization(manifest, stream) -> None:
    """What an int8 export did: its recipe, what it calibrated on, and which operators stayed float."""
    quantization = manifest.facts.get("quantization")
    if not quantization:
        return
    print(f"  quantized: {quantization['recipe']}", file=stream)
    if manifest.calibration:
        print(f"  calibrated on {manifest.calibration['count']} images: {manifest.calibration['source']}", file=stream)
    float_ops = quantization.get("float_ops") or {}
    print(f"  {quantization.get('quantized_ops', '?')} operators in int8; in float: "
          + (", ".join(f"{name} x{count}" for name, count in float_ops.items()) or "none"), file=stream)


def _print_delegation(manifest, stream) -> None:
    """Where the operators went: an ExecuTorch delegate's share and what stayed outside it, and what the runtime
    read of a program without running it; a Core ML program's compute units, target and what needs macOS."""
    delegation = manifest.facts.get("delegation")
    if not delegation:
        return
    facts = manifest.facts
    if "delegated_ops" in delegation:
        outside = delegation["non_delegated_ops"]
        print(f"  delegated to {delegation['delegate']}: {delegation['delegated_ops']}/{delegation['total_ops']} "
              f"operators in {delegation['delegate_calls']} subgraph(s); outside: "
              + (", ".join(f"{name} x{count}" for name, count in outside.items()) or "none")
              + "".join(f"; {key.replace('_', ' ')} {facts[key]}" for key in ("compute_units", "minimum_deployment_target")
                        if key in facts), file=stream)
        structure = facts.get("structure_check")
        if structure:
            print(f"  structure: {structure['status']}: methods {', '.join(structure['methods'])}; forward "
                  f"{structure['inputs'][0]} -> {structure['outputs'][0]}", file=stream)
        return
    print(f"  Core ML: compute units {facts.get('compute_units') or 'not set (Core ML chooses: all)'}, minimum "
          f"deployment target {facts['minimum_deployment_target']}; compute plan {delegation['compute_plan']}",
          file=stream)


@app.command("export")
def export_command(
    format: str = typer.Option("tflite", "--format", "-f", help=FORMAT_HELP),
    variant: str = typer.Option("conv_small", "--variant", "-v", help=VARIANT_HELP),
    weights: Path | None = typer.Option(
        None, "--weights", "-w",
        help="Checkpoint to export. Default: reproducible seeded weights, BatchNorm calibrated on photos."),
    resolution: int | None = typer.Option(None, "--resolution", "-r", min=32,
                                             help="Input resolution (default: the variant's)."),
    precision: str = typer.Option(
        "fp32", "--precision", "-p",
        help=f"{', '.join(PRECISIONS)}. int8: weights and activations, calibrated on images; int8-weights: weights only."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="int8: a directory of images to calibrate on (default: built-in photos, never the "
        "verification ones; the trained fixture's own training digits)."),
    calibration_count: int | None = typer.Option(
        None, "--calibration-count", help="int8: how many calibration images (default: up to 64, spread over DIR)."),
    int8_io: bool = typer.Option(False, "--int8-io", help="TFLite int8: int8 input and output tensors (NPUs, Edge TPU)."),
    delegate: str | None = typer.Option(
        None, "--delegate", help=f"ExecuTorch: the backend its operators go to, {', '.join(DELEGATES)} (default "
        f"{FORMATS['executorch'].delegates[0]}); only XNNPACK runs here, the others are lowered and checked but not "
        f"executed."),
    compute_units: str | None = typer.Option(
        None, "--compute-units", help=f"Core ML (and ExecuTorch --delegate coreml): {', '.join(COMPUTE_UNITS)}."),
    minimum_deployment_target: str | None = typer.Option(
        None, "--minimum-deployment-target",
        help=f"Core ML (and ExecuTorch --delegate coreml): {', '.join(DEPLOYMENT_TARGETS)} (default iOS17)."),
    max_accuracy_loss: float = typer.Option(
        MAX_TOP1_LOSS_POINTS, "--max-accuracy-loss",
        help="Points of held-out top-1 an artifact of the trained fixture may lose against PyTorch float32."),
    batch: int = typer.Option(1, "--batch", "-b", help="Fixed batch size of the artifact."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Leave the batch axis free."),
    nhwc: bool = typer.Option(False, "--nhwc", help="Channels-last (NHWC) input, where the format supports it."),
    image_input: bool = typer.Option(
        False, "--image-input", help="Core ML: an RGB image input, normalised inside the model (batch 1)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Artifact path (with --format all: a folder). Default: a name in the current folder."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Class names, one per line, recorded in the manifest (`mnv4 run` prints them)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing artifact."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip running the artifact against PyTorch."),
    threads: int = typer.Option(1, "--threads", min=1, help="Runtime threads used for verification."),
    json_output: bool = typer.Option(False, "--json", help="Print the manifest(s) as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output and no summary."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
):
    """Export a variant to ONNX, TFLite, ExecuTorch or Core ML and prove it computes what PyTorch does."""
    require_torch("`mnv4 export`")
    import json

    from rich.console import Console

    from .chatter import captured, terminal
    from .export import ExportRequest, VerificationFailed, check_request, export

    stream = terminal()
    console = Console(file=stream, quiet=quiet)
    formats = list(FORMATS) if format == "all" else [format]
    request = ExportRequest(variant=variant, weights=weights, resolution=resolution, precision=precision,
                            batch=batch, dynamic_batch=dynamic_batch, nhwc=nhwc, image_input=image_input,
                            verify=not no_verify, threads=threads, labels=labels, calibration=calibration,
                            calibration_count=calibration_count, int8_io=int8_io, max_accuracy_loss=max_accuracy_loss,
                            delegate=delegate, compute_units=compute_units,
                            minimum_deployment_target=minimum_deployment_target)
    for fmt in formats:
        check_request(fmt, request)
    manifests, failed = [], []
    for fmt in formats:
        target = output / f"{fmt}{FORMATS[fmt].suffix}" if (output and format == "all") else output
        with console.status(f"{fmt}: starting") as status, captured(not verbose, shown_to=stream):
            try:
                manifest = export(fmt, request, None if format == "all" and not output else target, force,
                                  step=lambda message, fmt=fmt: status.update(f"{fmt}: {message}"))
            except VerificationFailed as error:
                print(f"error: {error}", file=stream)
                failed.append(fmt)
                continue
        manifests.append(manifest.as_dict())
        if not quiet:
            console.print(f"[green]wrote[/green] {manifest.artifact} ({manifest.bytes / 1e6:.1f} MB, "
                          f"exported in {manifest.export_seconds:.1f} s)")
            _print_quantization(manifest, stream)
            _print_delegation(manifest, stream)
            _print_parity(manifest.parity, stream)
    if json_output:
        typer.echo(json.dumps(manifests if format == "all" else (manifests[0] if manifests else {}), indent=2))
    if failed:
        raise typer.Exit(EXIT_PARITY_FAILED)


@app.command()
def run(
    artifact: Path = typer.Argument(..., help="An exported artifact with its manifest beside it."),
    image: Path = typer.Argument(..., help="An image file."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes to print."),
    threads: int = typer.Option(1, "--threads", min=1, help="Runtime threads."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
):
    """Print the top-K classes that ARTIFACT itself computes for IMAGE (in its own runtime)."""
    import numpy as np

    from .artifact.files import sha256
    from .artifact.manifest import read_manifest
    from .chatter import captured
    from .data import load_image
    from .runtimes import load

    manifest = read_manifest(artifact)
    if sha256(artifact) != manifest.sha256:
        raise MNV4Error(f"{artifact} is not the artifact its manifest describes (sha256 differs): it changed after "
                        f"export; export it again, or see what `mnv4 verify` says of it")
    pixels = manifest.preprocessing_spec()(load_image(image))[None]
    if not manifest.dynamic_batch and manifest.batch > 1:
        pixels = np.repeat(pixels, manifest.batch, axis=0)
    with captured(not verbose):
        logits = load(artifact, threads=threads)(pixels)[0]
    print_top_classes(logits, top, manifest.labels)


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="An exported artifact with its manifest beside it."),
    weights: Path | None = typer.Option(None, "--weights", "-w",
                                           help="The checkpoint it was exported from (default: the manifest's)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Runtime threads."),
    max_accuracy_loss: float | None = typer.Option(
        None, "--max-accuracy-loss", help="Points of held-out top-1 the trained fixture may lose (default: as exported)."),
    reference: str = typer.Option(
        "auto", "--reference", help="stored: the PyTorch numbers stored beside the manifest at export (no PyTorch "
        "needed); model: rebuilt from the model the manifest names; auto: stored where there are some and no --weights."),
    xnnpack_fp16: bool = typer.Option(False, "--xnnpack-fp16", help=XNNPACK_FP16_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print the parity results as JSON on stdout."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
):
    """Re-run the parity check of an existing artifact against PyTorch (its stored numbers, or the model itself);
    exit code 1 when it fails."""
    import json
    import sys

    from .artifact.files import sha256
    from .artifact.manifest import read_manifest
    from .chatter import captured
    from .export.verify import verify_manifest

    manifest = read_manifest(artifact)
    changed = sha256(artifact) != manifest.sha256
    with captured(not verbose):
        parity = verify_manifest(artifact, manifest, weights, threads, max_accuracy_loss, reference,
                                 **runner_options(xnnpack_fp16))
    if changed:
        # Still verified: parity, not the hash, decides whether it computes the right thing.
        typer.echo(f"warning: {artifact} has changed since export (sha256 differs from the manifest's)", err=True)
    _print_parity(parity, sys.stderr)
    if json_output:
        typer.echo(json.dumps(parity, indent=2))
    if parity.get("passed") is False:
        raise typer.Exit(EXIT_PARITY_FAILED)


def _list(text: str, convert=str) -> tuple:
    """A comma-separated option value as a tuple; a value that does not convert is a one-line error."""
    try:
        return tuple(convert(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise MNV4Error(f"expected a comma-separated list of numbers, got {text!r}") from None


@app.command()
def bench(
    context: typer.Context,
    variant: str = typer.Option("conv_small", "--variant", "-v", help=VARIANT_HELP),
    formats: str = typer.Option(",".join([*FORMATS, TORCH]), "--formats",
                                help=f"Comma-separated: {', '.join([*FORMATS, TORCH])}."),
    precisions: str = typer.Option(",".join(PRECISIONS), "--precisions",
                                   help=f"Comma-separated: {', '.join(PRECISIONS)} (bf16: CUDA torch)."),
    threads: str = typer.Option("1", "--threads", help="Comma-separated CPU thread counts, e.g. 1,2."),
    batch: str | None = typer.Option(None, "--batch", help="Comma-separated batch sizes (default: 1; CUDA: 1,8,64,256)."),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda for the PyTorch CUDA rows."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed calls before timing."),
    repeats: int = typer.Option(1, "--repeats", help="Fresh processes per row (latency pools their calls)."),
    iterations: int | None = typer.Option(None, "--iterations", help="Timed calls (default: time by --min-seconds)."),
    min_seconds: float = typer.Option(2.0, "--min-seconds", help="Time each row for at least this long (and 10 calls)."),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint (default: seeded offline weights)."),
    resolution: int | None = typer.Option(None, "--resolution", "-r", min=32, help="Input resolution."),
    compare_timm: bool = typer.Option(False, "--compare-timm", help="Also measure timm's model, exported the same way."),
    output_dir: Path = typer.Option(Path("bench-results"), "--output-dir", "-o", help="Where results and report go."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any row failed or breaches parity (for CI)."),
    artifacts: list[Path] | None = typer.Option(
        None, "--artifacts", help="Measure these exported artifacts (or the ones in these folders) instead of "
        "exporting: judged by their stored references, no PyTorch needed (mnv4\\[runtime]). Repeatable."),
    xnnpack_fp16: bool = typer.Option(False, "--xnnpack-fp16", help="With --artifacts: " + XNNPACK_FP16_HELP),
    machine_name: str | None = typer.Option(
        None, "--machine-name", help="With --artifacts: the machine's name in reports (default: host-os-arch)."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
):
    """Parity and latency of every format and runtime (fresh process each), next to PyTorch and timm; with
    --artifacts, of artifacts exported elsewhere."""
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench.plan import BenchOptions, check_options, check_timing
    from .bench.run import strict_failures
    from .chatter import captured, terminal

    given = [name for name in context.params if context.get_parameter_source(name).name != "DEFAULT"]
    if artifacts:
        exporting = [f"--{name.replace('_', '-')}" for name in given if name in EXPORTING_BENCH_OPTIONS]
        if exporting:
            raise MNV4Error(f"{', '.join(exporting)} do not go with --artifacts: the artifacts are what is measured")
    else:
        with_artifacts = [f"--{name.replace('_', '-')}" for name in given if name in ("xnnpack_fp16", "machine_name")]
        if with_artifacts:
            raise MNV4Error(f"{', '.join(with_artifacts)} go with --artifacts DIR")
        require_torch("`mnv4 bench` without --artifacts")
    stream = terminal()
    console = Console(file=stream)
    if artifacts:
        from .bench.artifacts import ArtifactBenchOptions, bench_artifacts, find_artifacts

        options = ArtifactBenchOptions(threads=_list(threads, int), warmup=warmup, repeats=repeats,
                                       iterations=iterations, min_seconds=min_seconds, xnnpack_fp16=xnnpack_fp16,
                                       machine_name=machine_name)
        check_timing(options)
        measure = functools.partial(bench_artifacts, find_artifacts(list(artifacts)), options)
    else:
        from .bench.run import bench as run_bench

        bench_options = BenchOptions(
            variant=variant, formats=_list(formats), precisions=_list(precisions), threads=_list(threads, int),
            batches=_list(batch, int) if batch else None, device=device, warmup=warmup, repeats=repeats,
            iterations=iterations,
            min_seconds=min_seconds, weights=str(weights) if weights else None, resolution=resolution,
            compare_timm=compare_timm, command=shlex.join(["mnv4", *sys.argv[1:]]))
        check_options(bench_options)
        measure = functools.partial(run_bench, bench_options)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, captured(not verbose, shown_to=stream):
        task = progress.add_task("starting", total=None)
        results = measure(output_dir, progress=lambda text, done, total: progress.update(
            task, description=text, completed=done, total=total))
    rows = results["rows"]
    console.print(f"[green]wrote[/green] {output_dir / 'results.json'}, report.md, report.html: {len(rows)} rows, "
                  f"{sum(row['status'] == 'ok' for row in rows)} ok")
    failures = strict_failures(results)
    for failure in failures:
        typer.echo(f"{'error' if strict else 'warning'}: {failure}", err=True)
    if strict and failures:
        raise typer.Exit(EXIT_PARITY_FAILED)


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="results.json files from `mnv4 bench` (one per machine)."),
    output_dir: Path = typer.Option(Path("report"), "--output-dir", "-o", help="Where report.md and report.html go."),
):
    """Merge results from several machines into one Markdown + HTML report."""
    from .bench.report import merge

    markdown, html = merge(results, output_dir)
    typer.echo(f"wrote {markdown} and {html}")



@app.command("coreml-compare")
def coreml_compare(
    artifact: Path = typer.Argument(..., help="A Core ML .mlpackage with its manifest beside it."),
    threads: int = typer.Option(1, "--threads", min=1, help="Interpreter threads."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
):
    """macOS: run ARTIFACT in Core ML (predict) and in mnv4's ML-program interpreter on the parity inputs
    and compare the two; exit code 1 when they differ by more than the artifact's parity limits."""
    from .artifact.manifest import read_manifest
    from .artifact.parity import breaches, verification_inputs
    from .chatter import captured
    from .runtimes.coreml import compare_with_predict

    manifest = read_manifest(artifact)
    with captured(not verbose):
        parity = compare_with_predict(artifact, verification_inputs(manifest.preprocessing_spec()), threads)
    failures = breaches(parity, manifest.tolerance)
    typer.echo(f"interpreter vs Core ML predict on {parity.images} inputs: rel err {parity.rel_err:.2e}, "
               f"cosine {parity.cosine:.6f}, top-1 {parity.top1_agreement:.0%} -> "
               + ("FAIL: " + "; ".join(failures) if failures else "PASS"))
    if failures:
        raise typer.Exit(EXIT_PARITY_FAILED)


@app.command()
def emulate(
    architecture: str = typer.Argument(..., help="The architecture to emulate: arm64."),
    artifacts: list[Path] | None = typer.Argument(
        None, help="ONNX and TFLite artifacts, or folders of them, each with its manifest and stored reference."),
    output_dir: Path = typer.Option(Path("emulate-results"), "--output-dir", "-o",
                                    help="Where results.json, report.md, report.html and verify.json go."),
    cpu: str = typer.Option("cortex-a76", "--cpu", help="The core qemu emulates (a /proc/cpuinfo of it ships with mnv4)."),
    root: Path | None = typer.Option(
        None, "--root", help="Where the emulated Debian root and its wheels are built once and kept "
        "(default: $MNV4_CACHE/emulate, else ~/.cache/mnv4/emulate)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the output of the commands run in the root."),
):
    """Verify and bench ARTIFACTS on the ARM kernels of their runtimes, in an arm64 Debian root under qemu-user
    (root only; needs qemu-user-static, debootstrap and binfmt-support). Exit code 1 when an artifact fails its
    parity, XNNPACK did not run a TFLite graph, or an fp16 TFLite artifact did not compute in float16. Latency
    there is not representative of any ARM CPU; the numerics are the ARM kernels' own."""
    from .bench.emulate import emulate as run_emulation

    emulation = run_emulation(architecture, artifacts or [], output_dir, cpu, root,
                              progress=lambda message: typer.echo(message, err=True), verbose=verbose)
    for run in emulation.runs:
        typer.echo(run.summary(), err=True)
    typer.echo(f"wrote {output_dir / 'results.json'}, report.md, report.html and verify.json: machine "
               f"{emulation.machine['id']} ({emulation.machine['note']})", err=True)
    problems = emulation.problems()
    if problems:
        typer.echo(f"error: {'; '.join(problems)}", err=True)
        raise typer.Exit(EXIT_PARITY_FAILED)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (see mnv4.errors): 0 ok, 1 parity failed, 2 bad input or a
    damaged file, 3 an internal error, 128 + N when stopped by signal N. Every failure is one `error:` line;
    `--debug`, anywhere on the command line, shows the traceback of an internal error."""
    import signal
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    stopped_by: list[int] = []

    def stop(signum, _frame):
        # As Ctrl-C does: the exception unwinds through every `finally`, so no partial file stays behind.
        stopped_by.append(signum)
        raise KeyboardInterrupt

    def interrupted() -> int:
        signum = stopped_by[0] if stopped_by else signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return EXIT_INTERRUPTED + signum

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        code = app(args=args, prog_name="mnv4", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        return interrupted()
    except Exception as error:
        # A signal may surface as another exception (a library that turns the KeyboardInterrupt raised
        # inside its import into an ImportError, say): then the signal is what happened.
        return interrupted() if stopped_by else _failure(error, debug)
    if stopped_by:  # typer turns KeyboardInterrupt into a plain exit 130
        return interrupted()
    return code if isinstance(code, int) else EXIT_OK


def _failure(error: Exception, debug: bool) -> int:
    """One `error:` line for a failed command, and its exit code."""
    import sys
    import traceback

    try:  # typer raises click's exceptions, from its own copy of click since typer 0.2x
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    if isinstance(error, MNV4Error):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(error, click.NoArgsIsHelpError):
        return EXIT_BAD_INPUT  # the help is already on the screen
    if isinstance(error, click.UsageError):
        hint = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
        print(f"error: {error.format_message()}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(error, click.ClickException):  # click's own file errors and the like
        print(f"error: {error.format_message()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if debug:
        traceback.print_exception(error)
    where = "" if debug else "; run it again with --debug for the traceback"
    print(f"error: internal error in mnv4 ({one_line(error)}){where}", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def run_main() -> None:
    """The `mnv4` console script."""
    raise SystemExit(main())


if __name__ == "__main__":
    run_main()
