"""`export`: model -> one artifact + its manifest, verified in the artifact's own runtime.

The artifact is written under a temporary name beside the output and moved into place only after it
exported and verified, so a failed or interrupted export leaves nothing at the output path."""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import MNV4Error, PlatformUnsupportedError, UnsupportedOptionError
from ..bench.parity import tolerance_for
from ..model.weights import sha256
from .manifest import manifest_path, read_manifest

FORMATS = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte", "coreml": ".mlpackage"}
PRECISIONS = ("fp32", "fp16")
DYNAMIC_VERIFY_BATCHES = (1, 4)


class VerificationFailed(Exception):
    """The artifact computes something other than the PyTorch model (exit code 1, not a usage error)."""


@dataclass(frozen=True)
class ExportRequest:
    variant: str
    weights: Optional[Path] = None
    resolution: Optional[int] = None
    precision: str = "fp32"
    batch: int = 1
    dynamic_batch: bool = False
    nhwc: bool = False
    image_input: bool = False  # Core ML only: an RGB image input with the normalisation inside the model
    verify: bool = True
    threads: int = 1


def default_output(request: ExportRequest, fmt: str, resolution: int) -> Path:
    parts = [f"mnv4_{request.variant}", f"r{resolution}", request.precision]
    parts += ["nhwc"] if request.nhwc else []
    parts += ["image"] if request.image_input else []
    parts += ["dynamic"] if request.dynamic_batch else ([f"b{request.batch}"] if request.batch != 1 else [])
    return Path("_".join(parts) + FORMATS[fmt])


def reference_model(variant: str, weights: Optional[Path], resolution: Optional[int], seed: int = 0):
    """The PyTorch model an artifact must reproduce, and how its weights were obtained."""
    from ..bench.parity import RANDOM_INPUTS, verification_inputs
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
        calibration = torch.from_numpy(calibration)
        facts = seeded_calibrated_weights(model, calibration, seed)
    return model, preprocessing, facts


def artifact_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def remove_artifact(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def verify_artifact(artifact: Path, model, preprocessing, tolerance: str, batch_sizes, threads: int,
                    runner_factory=None) -> dict:
    """Parity of `artifact`, run by `runner_factory` (default: the runner `mnv4.runtimes` picks for it)."""
    from ..bench.parity import verify
    from ..runtimes import runner_class
    from ..runtimes.torch import TorchRunner

    try:
        candidate = (runner_factory or runner_class(artifact))(artifact, threads=threads)
    except MNV4Error as error:
        if isinstance(error, PlatformUnsupportedError):
            return {"passed": None, "status": f"not executed on this platform: {error}"}
        raise
    return verify(TorchRunner(model, threads=threads), candidate, preprocessing, tolerance, tuple(batch_sizes))


def export(fmt: str, request: ExportRequest, output: Optional[Path] = None, force: bool = False,
           step: Callable[[str], None] = lambda message: None) -> dict:
    """Export, verify, and move the artifact and its manifest into place; returns the manifest."""
    if fmt not in FORMATS:
        raise MNV4Error(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}, all")
    if request.precision not in PRECISIONS:
        raise MNV4Error(f"unknown precision {request.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if request.batch < 1:
        raise MNV4Error(f"--batch must be at least 1, got {request.batch}")
    if request.image_input and fmt != "coreml":
        raise UnsupportedOptionError(f"--image-input is only for Core ML (an image input type); {fmt} takes "
                                     f"the normalised tensor")
    step(f"building {request.variant}")
    model, preprocessing, weights = reference_model(request.variant, request.weights, request.resolution)
    output = Path(output or default_output(request, fmt, preprocessing.resolution))
    if output.suffix != FORMATS[fmt]:
        raise MNV4Error(f"a {fmt} artifact must end in {FORMATS[fmt]}: {output}")
    if (output.exists() or manifest_path(output).exists()) and not force:
        raise MNV4Error(f"{output} exists; pass --force to overwrite it")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial-{os.getpid()}{output.suffix}")
    example_batch = max(2, request.batch) if request.dynamic_batch else request.batch
    example = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (example_batch, 3, preprocessing.resolution, preprocessing.resolution)).astype(np.float32))
    exporter = importlib.import_module(f"{__name__}.{fmt}")
    try:
        step(f"exporting {fmt} ({request.precision})")
        started = time.perf_counter()
        # Toolchains print their own progress on stdout, which belongs to `mnv4 export --json`.
        with contextlib.redirect_stdout(sys.stderr):
            facts = exporter.export(model, example, partial, precision=request.precision,
                                    dynamic_batch=request.dynamic_batch, nhwc=request.nhwc,
                                    **({"image_input": True, "mean": preprocessing.mean, "std": preprocessing.std}
                                       if request.image_input else {}))
        export_seconds = time.perf_counter() - started
        verification = {"passed": None, "status": "skipped (--no-verify)"}
        if request.verify:
            step(f"verifying {fmt} in its runtime on photos")
            batches = DYNAMIC_VERIFY_BATCHES if request.dynamic_batch else (request.batch,)
            tolerance = tolerance_for(request.precision, facts.get("compute_dtype"))
            verification = verify_artifact(partial, model, preprocessing, tolerance, batches, request.threads,
                                           _image_input_runner(preprocessing) if request.image_input else None)
        manifest = {
            "schema": 1,
            "format": fmt,
            "artifact": output.name,
            "sha256": sha256(partial),
            "bytes": artifact_bytes(partial),
            "variant": request.variant,
            "resolution": preprocessing.resolution,
            "batch": "dynamic" if request.dynamic_batch else request.batch,
            "precision": request.precision,
            "num_classes": model.num_classes,
            "preprocessing": {"crop_pct": preprocessing.crop_pct, "interpolation": preprocessing.interpolation,
                              "mean": list(preprocessing.mean), "std": list(preprocessing.std)},
            "weights": weights,
            "versions": {"mnv4": _version(), "torch": torch.__version__, **facts.pop("toolchain", {})},
            "export_seconds": round(export_seconds, 2),
            **facts,
            "parity": verification,
        }
        if verification.get("passed") is False:
            raise VerificationFailed(f"{fmt} {request.precision} artifact fails parity: "
                                     + "; ".join(verification["failures"]))
        partial_manifest = manifest_path(partial)
        partial_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        for existing in (output, manifest_path(output)):
            remove_artifact(existing)
        os.replace(partial, output)
        os.replace(partial_manifest, manifest_path(output))
        return manifest
    finally:
        remove_artifact(partial)
        remove_artifact(manifest_path(partial))


def _image_input_runner(preprocessing):
    """An image-input Core ML artifact is verified by the program interpreter, on every platform: it takes
    the exact pixels the normalised inputs came from, where Core ML's predict would need 8-bit images.
    Its mean and std come from here because the manifest is written only after verification."""
    from ..runtimes.coreml import CoreMLProgramRunner

    return functools.partial(CoreMLProgramRunner, mean=preprocessing.mean, std=preprocessing.std)


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["FORMATS", "ExportRequest", "VerificationFailed", "export", "read_manifest", "reference_model"]
