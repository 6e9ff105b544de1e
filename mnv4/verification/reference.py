"""The reference an artifact must reproduce: the PyTorch model (its checkpoint, or the seeded weights an export was
made with) and what it computes on the verification inputs, in float32 and float64, and for mnv4's trained fixture on
its held-out digits. Everything here needs PyTorch."""
from __future__ import annotations

from pathlib import Path

from ..artifact.files import sha256
from ..artifact.manifest import Manifest
from ..artifact.parity import RANDOM_INPUTS, run_batched, verification_inputs
from ..artifact.reference import Reference, TaskReference
from ..errors import MNV4Error


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


def compute_reference(model, preprocessing, threads: int = 1, batch: int | None = None) -> Reference:
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


def manifest_model(artifact: Path, manifest: Manifest, weights: Path | None = None):
    """The reference model a manifest names, and its preprocessing: its checkpoint (or `weights`, which must be the
    same file by sha256), or the seeded weights it was exported with."""
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
