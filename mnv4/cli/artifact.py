"""The commands on an exported artifact: `run`, `verify`, `coreml-compare`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ParityFailed
from ..text import printable
from .common import (
    AllowModified,
    Artifact,
    JsonOutput,
    Runtime,
    Threads,
    Top,
    Verbose,
    Weights,
    XnnpackFp16,
    check_threads,
    emit_json,
    runner_options,
    stderr_lines,
    warn,
)


def run(
    artifact: Artifact,
    image: Annotated[Path, typer.Argument(help="An image file.")],
    top: Top = 5,
    threads: Threads = 1,
    allow_modified: AllowModified = False,
    verbose: Verbose = False,
):
    """Print the top-K classes that ARTIFACT itself computes for IMAGE (in its own runtime)."""
    import numpy as np

    from ..artifact.manifest import read_manifest, unchanged
    from ..artifact.summary import top_classes
    from ..chatter import captured
    from ..data import imagenet_class_names, load_image
    from ..runtimes import load

    manifest = read_manifest(artifact, allow_modified)
    warn(unchanged(artifact, manifest, allow_modified))
    pixels = manifest.preprocessing_spec()(load_image(image))[None]
    if not manifest.dynamic_batch and manifest.batch > 1:
        pixels = np.repeat(pixels, manifest.batch, axis=0)
    with captured(not verbose):
        logits = load(artifact, threads=threads)(pixels)[0]
    names = manifest.labels or (imagenet_class_names() if len(logits) == 1000 else None)
    for line in top_classes(logits, top, names):
        typer.echo(printable(line))


def verify(
    artifact: Artifact,
    weights: Weights = None,
    threads: Threads = 1,
    max_accuracy_loss: Annotated[float | None, typer.Option(
        "--max-accuracy-loss", help="Points of held-out top-1 the trained fixture may lose (default: as exported).")] = None,
    reference: Annotated[str, typer.Option(
        "--reference", help="stored: the PyTorch numbers stored beside the manifest at export (no PyTorch needed); "
        "model: rebuilt from the model the manifest names; auto: stored where there are some and no --weights.")] = "auto",
    runtime: Runtime = None,
    xnnpack_fp16: XnnpackFp16 = False,
    allow_modified: AllowModified = False,
    json_output: JsonOutput = False,
    verbose: Verbose = False,
):
    """Re-run the parity check of an existing artifact against PyTorch (its stored numbers, or the model itself), in
    its format's CPU runtime or in --runtime; exit code 1 when it fails."""
    from ..artifact.manifest import read_manifest, unchanged
    from ..artifact.options import OPTIONS
    from ..artifact.summary import parity_line, runtime_lines
    from ..chatter import captured
    from ..verification.verify import verify_manifest

    if max_accuracy_loss is not None:
        OPTIONS["max_accuracy_loss"].check_value(max_accuracy_loss)
    manifest = read_manifest(artifact, allow_modified)
    warn(unchanged(artifact, manifest, allow_modified))
    with captured(not verbose):
        parity = verify_manifest(artifact, manifest, weights, threads, max_accuracy_loss, reference, runtime,
                                 **runner_options(xnnpack_fp16))
    stderr_lines([*runtime_lines(parity), parity_line(parity)])
    if json_output:
        emit_json(parity)
    if parity.get("passed") is False:
        raise ParityFailed([f"{artifact.name} fails parity"])


def coreml_compare(
    artifact: Annotated[Path, typer.Argument(help="A Core ML .mlpackage with its manifest beside it.")],
    threads: Threads = 1,
    verbose: Verbose = False,
):
    """macOS: run ARTIFACT in Core ML (predict) and in mnv4's ML-program interpreter on the parity inputs
    and compare the two; exit code 1 when they differ by more than the artifact's parity limits."""
    from ..artifact.manifest import read_manifest, unchanged
    from ..artifact.parity import breaches
    from ..chatter import captured
    from ..runtimes.coreml import compare_with_predict

    manifest = read_manifest(artifact)
    unchanged(artifact, manifest)
    with captured(not verbose):
        parity = compare_with_predict(artifact, _inputs_of(artifact, manifest), check_threads(threads))
    failures = breaches(parity, manifest.limits)
    typer.echo(f"interpreter vs Core ML predict on {parity.images} inputs: rel err {parity.rel_err:.2e}, "
               f"cosine {parity.cosine:.6f}, top-1 {parity.top1_agreement:.0%} -> "
               + ("FAIL: " + "; ".join(failures) if failures else "PASS"))
    if failures:
        raise ParityFailed([f"the interpreter and Core ML's predict disagree on {artifact.name}"])


def _inputs_of(artifact: Path, manifest):
    """The verification inputs: the stored reference's (no PyTorch or scikit-image needed), else computed."""
    from ..artifact.parity import verification_inputs
    from ..artifact.reference import read_reference

    if manifest.reference:
        return read_reference(artifact, manifest).inputs
    return verification_inputs(manifest.preprocessing_spec())
