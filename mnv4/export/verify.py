"""The one verification path: the PyTorch reference an artifact must reproduce, and the artifact's parity
with it in the artifact's own runtime. `export` verifies a fresh artifact with the model in memory;
`mnv4 verify` and the bench rebuild the reference from the manifest (`verify_manifest`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..artifact.files import sha256
from ..artifact.manifest import Manifest
from ..artifact.parity import MAX_TOP1_LOSS_POINTS, RANDOM_INPUTS, verification_inputs, verify
from ..errors import MNV4Error, PlatformUnsupportedError
from ..model.task import held_out_for, predict, task_record
from ..runtimes import load
from ..runtimes.torch import TorchRunner


def reference_model(variant: str, weights: Path | None, resolution: int | None, seed: int = 0):
    """The PyTorch model an artifact must reproduce, its preprocessing, and how its weights were obtained."""
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


def verify_artifact(artifact: Path, model, preprocessing, tolerance: str, batch_sizes, threads: int,
                    runner_factory: Callable | None = None, max_loss_points: float = MAX_TOP1_LOSS_POINTS) -> dict:
    """Parity of `artifact`, run by `runner_factory` (default: the runner `mnv4.runtimes` picks for it)."""
    try:
        candidate = load(artifact, threads=threads, runner=runner_factory)
    except PlatformUnsupportedError as error:
        return not_executed(error)
    return verify_against(model, candidate, preprocessing, tolerance, tuple(batch_sizes), threads, max_loss_points)


def verify_against(model, candidate, preprocessing, tolerance: str, batch_sizes: tuple[int, ...], threads: int,
                   max_loss_points: float = MAX_TOP1_LOSS_POINTS) -> dict:
    """Parity of a loaded candidate with `model` in float32 and the truth, `model` in float64; for a model
    trained on mnv4's task (the fixture), also its held-out accuracy against PyTorch float32's, of which it may
    lose at most `max_loss_points`."""
    parity = verify(TorchRunner(model, threads=threads), candidate, preprocessing, tolerance, batch_sizes,
                    truth=TorchRunner(model, threads=threads, mode="float64"))
    held_out, not_measured = held_out_for(getattr(model, "checkpoint", None), preprocessing)
    if not_measured:
        parity["task"] = not_measured
    elif held_out:
        parity["task"] = task_record(predict(candidate, held_out.images),
                                     predict(TorchRunner(model, threads=threads), held_out.images), held_out,
                                     max_loss_points)
        if not parity["task"]["passed"]:
            parity["passed"] = False
            parity["failures"].append(parity["task"]["failure"])
    return parity


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
                    max_loss_points: float | None = None) -> dict:
    """Parity of an exported artifact against the reference its manifest names, at the batches it was
    verified at on export and with the limits of its precision; the fixture's accuracy bound is
    `max_loss_points`, else the one it was exported with."""
    try:
        candidate = load(artifact, threads=threads)  # first: a damaged file is refused before the reference is built
    except PlatformUnsupportedError as error:
        return not_executed(error)
    model, preprocessing = manifest_reference(artifact, manifest, weights)
    if max_loss_points is None:
        max_loss_points = manifest.parity.get("task", {}).get("max_top1_loss_points", MAX_TOP1_LOSS_POINTS)
    return verify_against(model, candidate, preprocessing, manifest.tolerance, tuple(manifest.verify_batches), threads,
                          max_loss_points)
