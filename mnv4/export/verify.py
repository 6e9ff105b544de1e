"""The one verification path: the reference an artifact must reproduce, and the artifact's parity with it in
the artifact's own runtime (`artifact.parity.judge`). `export` computes the reference with the model in memory and
stores it beside the artifact; `mnv4 verify` judges by that stored reference, or rebuilds it from the model the
manifest names (`verify_manifest`). PyTorch is imported only to build a reference, so a runtime-only install
(`mnv4[runtime]`) verifies with the stored one."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..artifact.files import sha256
from ..artifact.manifest import Manifest
from ..artifact.parity import MAX_TOP1_LOSS_POINTS, RANDOM_INPUTS, judge, run_batched, tolerance_for, verification_inputs
from ..artifact.reference import Reference, TaskReference, read_reference
from ..errors import MissingExtraError, MNV4Error, PlatformUnsupportedError
from ..extras import torch_installed
from ..runtimes import load

REFERENCE_SOURCES = ("auto", "stored", "model")


def reference_model(variant: str, weights: Path | None, resolution: int | None, seed: int = 0):
    """The PyTorch model an artifact must reproduce, its preprocessing, and how its weights were obtained."""
    import torch

    from ..model.factory import create_model
    from ..model.weights import seeded_calibrated_weights

    model = create_model(variant, pretrained=weights or False)
    preprocessing = model.preprocessing.at(resolution or model.preprocessing.resolution)
    if weights:
        facts = {"kind": "checkpoint", "path": str(Path(weights).resolve()), "sha256": sha256(weights)}
    else:
        # Mirrored photos and other random-pixel images than the verification ones: the statistics cover
        # both kinds of verification input without being measured on those inputs themselves.
        calibration = verification_inputs(preprocessing, seed=seed + 1)
        calibration[:-RANDOM_INPUTS] = calibration[:-RANDOM_INPUTS, ..., ::-1].copy()
        facts = seeded_calibrated_weights(model, torch.from_numpy(calibration), seed)
    return model, preprocessing, facts


def model_reference(model, preprocessing, threads: int = 1, batch: int | None = None) -> Reference:
    """The reference computed by `model`: PyTorch float32 (`batch` inputs at a time; default all at once) and
    float64 on the verification inputs and, for a model trained on mnv4's task (the fixture), PyTorch float32 on
    its held-out images."""
    from ..model.task import TASK, held_out_for, predict
    from ..runtimes.torch import TorchRunner

    inputs = verification_inputs(preprocessing)
    runner = TorchRunner(model, threads=threads)
    held_out, not_measured = held_out_for(getattr(model, "checkpoint", None), preprocessing)
    task = TaskReference(TASK, held_out.images, held_out.labels, predict(runner, held_out.images)) if held_out else None
    return Reference(inputs, len(inputs) - RANDOM_INPUTS, run_batched(runner, inputs, batch or len(inputs)),
                     TorchRunner(model, threads=threads, mode="float64")(inputs), task, not_measured)


def verify_artifact(artifact: Path, reference: Reference, tolerance: str, batch_sizes, threads: int,
                    runner_factory: Callable | None = None, max_loss_points: float = MAX_TOP1_LOSS_POINTS) -> dict:
    """Parity of `artifact`, run by `runner_factory` (default: the runner `mnv4.runtimes` picks for it)."""
    try:
        candidate = load(artifact, threads=threads, runner=runner_factory)
    except PlatformUnsupportedError as error:
        return not_executed(error)
    return judge(reference, candidate, tolerance, tuple(batch_sizes), max_loss_points)


def not_executed(error: PlatformUnsupportedError) -> dict:
    """The parity record of an artifact that cannot run on this platform: never a pass."""
    return {"passed": None, "status": f"not executed on this platform: {error}"}


def manifest_reference(artifact: Path, manifest: Manifest, weights: Path | None = None):
    """The reference model a manifest names: its checkpoint (or `weights`, which must be the same file by
    sha256), or the seeded weights it was exported with."""
    recorded = manifest.weights
    if recorded["kind"] == "checkpoint":
        weights = Path(weights or recorded["path"])
        if not weights.is_file():
            raise MNV4Error(f"the checkpoint {artifact.name} was exported from is not at {weights}; pass --weights")
        if sha256(weights) != recorded["sha256"]:
            raise MNV4Error(f"{weights} is not the checkpoint {artifact.name} was exported from (sha256 differs)")
        model, preprocessing, _ = reference_model(manifest.variant, weights, manifest.resolution)
    else:
        model, preprocessing, _ = reference_model(manifest.variant, None, manifest.resolution,
                                                  seed=recorded.get("seed", 0))
    return model, preprocessing


def verify_manifest(artifact: Path, manifest: Manifest, weights: Path | None = None, threads: int = 1,
                    max_loss_points: float | None = None, reference: str = "auto", **runner_options) -> dict:
    """Parity of an exported artifact at the batches it was verified at on export and with the limits of its
    precision (float16 ones where its runner computes in float16), against its `reference`: "stored" (beside
    the manifest), "model" (rebuilt from the model the manifest names, or from `weights`), or "auto" (the
    stored one where there is one and no `weights` were given). The fixture's accuracy bound is
    `max_loss_points`, else the one it was exported with."""
    if reference not in REFERENCE_SOURCES:
        raise MNV4Error(f"--reference must be one of {', '.join(REFERENCE_SOURCES)}, not {reference!r}")
    if reference == "stored" and weights is not None:
        raise MNV4Error("--weights rebuilds the reference from the model: it goes with --reference model (or auto)")
    try:
        candidate = load(artifact, threads=threads, **runner_options)  # first: a damaged file is refused early
    except PlatformUnsupportedError as error:
        return not_executed(error)
    if reference == "auto":
        reference = "model" if weights is not None or (manifest.reference is None and torch_installed()) else "stored"
    if reference == "stored":
        expected = read_reference(artifact, manifest.reference)
    elif not torch_installed():
        raise MissingExtraError("PyTorch (to rebuild the reference from the model)", "torch")
    else:
        model, preprocessing = manifest_reference(artifact, manifest, weights)
        expected = model_reference(model, preprocessing, threads, max(manifest.verify_batches))
    if max_loss_points is None:
        max_loss_points = manifest.parity.get("task", {}).get("max_top1_loss_points", MAX_TOP1_LOSS_POINTS)
    tolerance = tolerance_for(manifest.precision, getattr(candidate, "compute_dtype", None) or manifest.compute_dtype)
    parity = judge(expected, candidate, tolerance, tuple(manifest.verify_batches), max_loss_points)
    return {**parity, "reference_source": "stored beside the manifest" if reference == "stored" else "rebuilt from the model",
            "execution": candidate.execution()}
