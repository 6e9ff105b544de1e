"""The one verification path of `mnv4 export`, `mnv4 verify` and the bench: an artifact run in its own runtime and
judged against its reference (`artifact.parity.judge`). `export` computes the reference with the model in memory
and stores it beside the artifact; `mnv4 verify` judges by that stored reference, or rebuilds it from the model the
manifest names (`verify_manifest`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..artifact import schema
from ..artifact.formats import Runtime, runtime_of
from ..artifact.manifest import Manifest
from ..artifact.options import OPTIONS
from ..artifact.parity import MAX_TOP1_LOSS_POINTS, judge
from ..artifact.precisions import Limits, limits_for
from ..artifact.reference import Reference, read_reference
from ..errors import MissingExtraError, MNV4Error, PlatformUnsupportedError
from ..extras import torch_installed
from ..runtimes import Runner, load

REFERENCE_SOURCES = ("auto", "stored", "model")


def verify_artifact(artifact: Path, reference: Reference, limits: Limits, batch_sizes, threads: int,
                    runner_factory: Callable | None = None, max_loss_points: float = MAX_TOP1_LOSS_POINTS,
                    normalisation: tuple | None = None) -> dict:
    """Parity of `artifact`, run by `runner_factory` (default: the runner `mnv4.runtimes` picks for it); an image
    input's pixels recovered with `normalisation` (mean, std) where given."""
    try:
        candidate = load(artifact, threads=threads, runner=runner_factory, normalisation=normalisation)
    except PlatformUnsupportedError as error:
        return not_executed(error)
    try:
        return judge(reference, candidate, limits, tuple(batch_sizes), max_loss_points)
    finally:
        candidate.close()


def verify_in_runtime(artifact: Path, runtime: str, reference: Reference, precision: str, exported_dtype: str | None,
                      batch_sizes, threads: int, max_loss_points: float = MAX_TOP1_LOSS_POINTS,
                      normalisation: tuple | None = None) -> dict:
    """Parity of `artifact` in `runtime`, one that users ship to beside its format's CPU one (`mnv4 export
    --runtime`), by the limits of what that runtime computes in."""
    row = runtime_of(artifact, runtime)
    candidate = load(artifact, threads=threads, runtime=runtime, normalisation=normalisation)
    try:
        return judge_in_runtime(candidate, row, reference, precision, exported_dtype, batch_sizes, max_loss_points)
    finally:
        candidate.close()


def judge_in_runtime(candidate: Runner, row: Runtime, reference: Reference, precision: str, exported_dtype: str | None,
                     batch_sizes, max_loss_points: float) -> dict:
    """The parity record of a loaded artifact: judged by the limits of what its runtime computes in (float16 where it
    forces that, else as exported), with the runtime, its known issue at this precision and what it did."""
    limits = limits_for(precision, getattr(candidate, "compute_dtype", None) or exported_dtype)
    parity = judge(reference, candidate, limits, tuple(batch_sizes), max_loss_points)
    return {**parity, **row.record(precision), "execution": candidate.execution()}


def not_executed(error: PlatformUnsupportedError) -> dict:
    """The parity record of an artifact that cannot run on this platform: never a pass."""
    return {"passed": None, "status": f"not executed on this platform: {error}"}


def verify_manifest(artifact: Path, manifest: Manifest, weights: Path | None = None, threads: int = 1,
                    max_loss_points: float | None = None, reference: str = "auto", runtime: str | None = None,
                    **runner_options) -> dict:
    """Parity of an exported artifact in `runtime` (default: its format's CPU runtime) at the batches it was
    verified at on export and with the limits of its precision (float16 ones where the runtime computes in float16),
    against its `reference`: "stored" (beside the manifest), "model" (rebuilt from the model the manifest names, or
    from `weights`), or "auto" (the stored one where there is one and no `weights` were given). The fixture's
    accuracy bound is `max_loss_points`, else the one it was exported with."""
    if reference not in REFERENCE_SOURCES:
        raise MNV4Error(f"--reference must be one of {', '.join(REFERENCE_SOURCES)}, not {reference!r}")
    if reference == "stored" and weights is not None:
        raise MNV4Error("--weights rebuilds the reference from the model: it goes with --reference model (or auto)")
    row = runtime_of(artifact, runtime)
    try:
        candidate = load(artifact, threads=threads, runtime=row.name, **runner_options)  # first: a damaged file early
    except PlatformUnsupportedError as error:
        return not_executed(error)
    try:
        return _verify_loaded(candidate, row, artifact, manifest, weights, threads, max_loss_points, reference)
    finally:
        candidate.close()


def _verify_loaded(candidate: Runner, row: Runtime, artifact: Path, manifest: Manifest, weights: Path | None, threads: int,
                   max_loss_points: float | None, reference: str) -> dict:
    if reference == "auto":
        reference = "model" if weights is not None or (manifest.reference is None and torch_installed()) else "stored"
    if reference == "stored":
        expected = read_reference(artifact, manifest)
    elif not torch_installed():
        raise MissingExtraError("PyTorch (to rebuild the reference from the model)", "torch")
    else:
        from .reference import compute_reference, manifest_model

        model, preprocessing = manifest_model(artifact, manifest, weights)
        expected = compute_reference(model, preprocessing, threads, max(manifest.verify_batches))
    if max_loss_points is None:
        max_loss_points = _exported_bound(artifact, manifest)
    parity = judge_in_runtime(candidate, row, expected, manifest.precision, manifest.compute_dtype,
                              manifest.verify_batches, max_loss_points)
    return {**parity, "reference_source": "stored beside the manifest" if reference == "stored" else "rebuilt from the model"}


def _exported_bound(artifact: Path, manifest: Manifest) -> float:
    """The fixture's accuracy bound the artifact was exported with (the default where it records none)."""
    task = manifest.parity.get("task")
    bound = task.get("max_top1_loss_points", MAX_TOP1_LOSS_POINTS) if isinstance(task, dict) else MAX_TOP1_LOSS_POINTS
    points = schema.number(*OPTIONS["max_accuracy_loss"].bounds)
    if not points.accepts(bound):
        raise MNV4Error(f"the manifest of {artifact.name} records the accuracy bound {schema.shown(bound)}: not "
                        f"{points.description} (points of top-1)")
    return bound
