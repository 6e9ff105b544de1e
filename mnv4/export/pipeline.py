"""`export`: model -> one artifact + its manifest, verified in the artifact's own runtime.

The artifact is written under a partial name beside the output and published only after it exported and
verified, so a failed or interrupted export leaves nothing at the output path."""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifact.files import (
    artifact_bytes,
    check_output,
    disk_is_full,
    partial_path,
    publish,
    remove_artifact,
    remove_stale_partials,
    sha256,
)
from ..artifact.formats import CALIBRATED, FORMATS, PRECISIONS, get_format
from ..artifact.manifest import DYNAMIC, Manifest, manifest_path
from ..artifact.parity import DYNAMIC_VERIFY_BATCHES, MAX_TOP1_LOSS_POINTS, tolerance_for
from ..artifact.reference import reference_path
from ..calibration import DEFAULT_COUNT, MAX_COUNT, Calibration, builtin_calibration, chosen, directory_calibration, image_files
from ..errors import MNV4Error, one_line
from ..model.specs import get_spec
from ..model.task import task_of
from .program import MAX_DYNAMIC_BATCH
from .verify import model_reference, reference_model, verify_artifact

MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024  # beyond 1024 px an export needs more memory than a laptop has
MAX_BATCH = MAX_DYNAMIC_BATCH
MAX_THREADS = 256


# Options handed to the exporter only when set (as int8_io is): exporters of formats without them do not take them.
_TOOLCHAIN_OPTIONS = ("delegate", "compute_units", "minimum_deployment_target")


class VerificationFailed(Exception):
    """The artifact computes something other than the PyTorch model (exit code 1, not a usage error)."""


@dataclass(frozen=True)
class ExportRequest:
    variant: str
    weights: Path | None = None
    resolution: int | None = None
    precision: str = "fp32"
    batch: int = 1
    dynamic_batch: bool = False
    nhwc: bool = False
    image_input: bool = False  # Core ML only: an RGB image input with the normalisation inside the model
    verify: bool = True
    threads: int = 1
    labels: Path | None = None  # class names, one per line, for the manifest
    calibration: Path | None = None  # int8: a directory of calibration images (default: built-in photos)
    calibration_count: int | None = None  # int8: how many calibration images (default: up to DEFAULT_COUNT)
    int8_io: bool = False  # int8 TFLite: int8 input and output tensors
    delegate: str | None = None  # ExecuTorch: the backend its operators go to (None: the format's default)
    compute_units: str | None = None  # Core ML programs: the hardware Core ML may run them on
    minimum_deployment_target: str | None = None  # Core ML programs: the oldest OS that runs them
    max_accuracy_loss: float = MAX_TOP1_LOSS_POINTS  # the trained fixture's allowed top-1 loss, in points


def read_labels(path: Path) -> list[str]:
    """Class names, one per line (trailing blank lines ignored); each must be a non-empty line."""
    try:
        names = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise MNV4Error(f"cannot read --labels {path}: {getattr(error, 'strerror', None) or error}") from None
    names = [name.strip() for name in names]
    if not all(names):
        raise MNV4Error(f"--labels {path} has an empty line {names.index('') + 1}: give one class name per line")
    return names


def default_output(request: ExportRequest, fmt: str, resolution: int) -> Path:
    parts = [f"mnv4_{request.variant}", f"r{resolution}", request.precision]
    parts += ["int8io"] if request.int8_io else []
    parts += [request.delegate] if request.delegate not in (None, *FORMATS[fmt].delegates[:1]) else []
    parts += [request.compute_units] if request.compute_units else []
    parts += [request.minimum_deployment_target] if request.minimum_deployment_target else []
    parts += ["nhwc"] if request.nhwc else []
    parts += ["image"] if request.image_input else []
    parts += ["dynamic"] if request.dynamic_batch else ([f"b{request.batch}"] if request.batch != 1 else [])
    return Path("_".join(parts) + FORMATS[fmt].suffix)


def check_request(fmt: str, request: ExportRequest) -> None:
    """Every option checked against the format table before any work."""
    if fmt not in FORMATS:
        raise MNV4Error(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}, all")
    if request.precision not in PRECISIONS:
        raise MNV4Error(f"unknown precision {request.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if not 1 <= request.batch <= MAX_BATCH:
        raise MNV4Error(f"--batch must be from 1 to {MAX_BATCH}, got {request.batch}")
    if request.resolution is not None and not MIN_RESOLUTION <= request.resolution <= MAX_RESOLUTION:
        raise MNV4Error(f"--resolution must be from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {request.resolution}")
    if not 1 <= request.threads <= MAX_THREADS:
        raise MNV4Error(f"--threads must be from 1 to {MAX_THREADS}, got {request.threads}")
    if not 0 <= request.max_accuracy_loss <= 100:
        raise MNV4Error(f"--max-accuracy-loss is in points of top-1, from 0 to 100, got {request.max_accuracy_loss:g}")
    get_spec(request.variant)  # an unknown variant is refused here, before any work
    get_format(fmt).check(precision=request.precision, nhwc=request.nhwc, dynamic_batch=request.dynamic_batch,
                          image_input=request.image_input, int8_io=request.int8_io, delegate=request.delegate,
                          compute_units=request.compute_units, minimum_deployment_target=request.minimum_deployment_target)
    if request.precision not in CALIBRATED:
        for option, value in (("--calibration", request.calibration), ("--calibration-count", request.calibration_count)):
            if value is not None:
                raise MNV4Error(f"{option} is for --precision {' or '.join(CALIBRATED)} (calibrated activations), "
                                f"not {request.precision}")
        return
    if request.calibration_count is not None and not 1 <= request.calibration_count <= MAX_COUNT:
        raise MNV4Error(f"--calibration-count must be from 1 to {MAX_COUNT}, got {request.calibration_count}")
    if request.calibration is not None:
        chosen(image_files(request.calibration), request.calibration_count, str(request.calibration))


@functools.lru_cache(maxsize=2)  # `--format all` exports one request four times: its calibration is read once
def calibration_for(request: ExportRequest, preprocessing) -> Calibration:
    """The images an int8 export calibrates on: `--calibration DIR`; for mnv4's trained fixture, its own task's
    training images (the held-out ones judge it); else the built-in photos."""
    if request.calibration is not None:
        return directory_calibration(request.calibration, preprocessing, request.calibration_count)
    if task_of(request.weights):
        from ..model.task import TASK, digits

        training = digits(preprocessing)[0]
        picked = chosen(list(range(len(training.images))), request.calibration_count or DEFAULT_COUNT, "the training split")
        return Calibration(training.images[picked], f"{TASK} training split (the fixture's own task; never held-out)",
                           [f"{TASK}[{index}]" for index in picked])
    return builtin_calibration(preprocessing, request.calibration_count or DEFAULT_COUNT)


def export(fmt: str, request: ExportRequest, output: Path | None = None, force: bool = False,
           step: Callable[[str], None] = lambda message: None) -> Manifest:
    """Export, verify, and move the artifact and its manifest into place; returns the manifest."""
    check_request(fmt, request)
    artifact_format = FORMATS[fmt]
    resolution = request.resolution or get_spec(request.variant).preprocessing.resolution
    output = Path(output or default_output(request, fmt, resolution))
    check_output(output, artifact_format, force)
    remove_stale_partials(output)
    labels = read_labels(request.labels) if request.labels else None
    step(f"building {request.variant}")
    model, preprocessing, weights = reference_model(request.variant, request.weights, request.resolution)
    if labels is not None and len(labels) != model.num_classes:
        raise MNV4Error(f"--labels {request.labels} names {len(labels)} classes; the model has {model.num_classes}")
    calibration = calibration_for(request, preprocessing) if request.precision in CALIBRATED else None
    partial = partial_path(output)
    example_batch = max(2, request.batch) if request.dynamic_batch else request.batch
    example = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (example_batch, 3, preprocessing.resolution, preprocessing.resolution)).astype(np.float32))
    exporter = importlib.import_module(f"mnv4.export.{artifact_format.exporter}")
    try:
        step(f"exporting {fmt} ({request.precision})")
        started = time.perf_counter()
        # Toolchains print their own progress on stdout, which belongs to `mnv4 export --json`.
        with contextlib.redirect_stdout(sys.stderr):
            facts = exporter.export(model, example, partial, precision=request.precision,
                                    dynamic_batch=request.dynamic_batch, nhwc=request.nhwc,
                                    **({"image_input": True, "mean": preprocessing.mean, "std": preprocessing.std}
                                       if request.image_input else {}),
                                    **({"calibration": calibration.images} if calibration else {}),
                                    **({"int8_io": True} if request.int8_io else {}),
                                    **{option: getattr(request, option) for option in _TOOLCHAIN_OPTIONS
                                       if getattr(request, option) is not None})
        export_seconds = time.perf_counter() - started
        verification, reference = {"passed": None, "status": "skipped (--no-verify)"}, None
        if request.verify:
            step(f"verifying {fmt} in its runtime on photos")
            batches = DYNAMIC_VERIFY_BATCHES if request.dynamic_batch else (request.batch,)
            tolerance = tolerance_for(request.precision, facts.get("compute_dtype"))
            reference = model_reference(model, preprocessing, request.threads, max(batches))
            verification = verify_artifact(partial, reference, tolerance, batches, request.threads,
                                           _image_input_runner(preprocessing) if request.image_input else None,
                                           max_loss_points=request.max_accuracy_loss)
            reference.write(partial)
        manifest = Manifest(
            format=fmt, artifact=output.name, sha256=sha256(partial), bytes=artifact_bytes(partial),
            variant=request.variant, resolution=preprocessing.resolution,
            batch=DYNAMIC if request.dynamic_batch else request.batch, precision=request.precision,
            num_classes=model.num_classes, labels=labels,
            calibration=calibration.record() if calibration else None,
            reference=reference.record(output, partial) if reference else None, model=_size(model, preprocessing),
            preprocessing={"crop_pct": preprocessing.crop_pct, "interpolation": preprocessing.interpolation,
                           "mean": list(preprocessing.mean), "std": list(preprocessing.std)},
            weights=weights, versions={"mnv4": _version(), "torch": torch.__version__, **facts.pop("toolchain", {})},
            export_seconds=round(export_seconds, 2), facts=facts, parity=verification)
        if verification.get("passed") is False:
            raise VerificationFailed(f"{fmt} {request.precision} artifact fails parity: "
                                     + "; ".join(verification["failures"]))
        partial_manifest = manifest.write(partial)
        remove_artifact(manifest_path(output))
        remove_artifact(reference_path(output))
        publish(partial, output)
        if reference:
            publish(reference_path(partial), reference_path(output))
        publish(partial_manifest, manifest_path(output))
        return manifest
    except OSError as error:
        raise MNV4Error(f"cannot write {output}: {error.strerror or one_line(error)}") from None
    except Exception as error:
        # Toolchains report a full disk in their own words (a RuntimeError from a serialiser, say).
        if not isinstance(error, (MNV4Error, VerificationFailed)) and disk_is_full(output.parent):
            raise MNV4Error(f"cannot write {output}: no space left on {output.parent}") from None
        raise
    finally:
        for leftover in (partial, manifest_path(partial), reference_path(partial)):
            remove_artifact(leftover)


def _image_input_runner(preprocessing):
    """An image-input Core ML artifact is verified by the program interpreter, on every platform: it takes
    the exact pixels the normalised inputs came from, where Core ML's predict would need 8-bit images.
    Its mean and std come from here because the manifest is written only after verification."""
    from ..runtimes.coreml import CoreMLProgramRunner

    return functools.partial(CoreMLProgramRunner, mean=preprocessing.mean, std=preprocessing.std)


def _size(model, preprocessing) -> dict:
    """What the bench needs to turn a latency into GFLOP/s where PyTorch is not installed."""
    from ..model.profile import profile

    return {"params": sum(p.numel() for p in model.parameters()),
            "macs": profile(model, (3, preprocessing.resolution, preprocessing.resolution)).macs}


def _version() -> str:
    from .. import __version__

    return __version__
