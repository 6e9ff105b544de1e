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
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import ArtifactFacts, Description
from ..artifact.files import (
    artifact_bytes,
    check_output,
    companion_paths,
    disk_is_full,
    partial_path,
    publish,
    read_text,
    remove_artifact,
    remove_stale_partials,
    sha256,
)
from ..artifact.formats import FORMATS
from ..artifact.manifest import DYNAMIC, Manifest, manifest_path
from ..artifact.options import DEFAULT_TARGET_PLATFORM, ExportRequest, check
from ..artifact.parity import DYNAMIC_VERIFY_BATCHES, with_known_issue
from ..artifact.reference import Reference, reference_path
from ..calibration import DEFAULT_COUNT, Calibration, builtin_calibration, chosen, directory_calibration, image_files
from ..data import imagenet_class_names, pixels_of
from ..errors import MNV4Error, ParityFailed, one_line
from ..model.specs import get_spec
from ..model.task import task_of
from ..text import BOM, printable, unsafe_characters
from ..verification.reference import compute_reference, reference_model
from ..verification.verify import verify_artifact, verify_in_runtime
from .program import ImageInput

Step = Callable[[str], None]  # told what the export is doing
MAX_LABELS_BYTES = 16 << 20


def read_labels(path: Path) -> list[str]:
    """Class names, one per line (a UTF-8 byte order mark and trailing blank lines ignored, \r\n line ends too); each a
    non-empty name without control or bidirectional characters, which would reach every terminal that prints it."""
    text = read_text(path, "--labels file", MAX_LABELS_BYTES).removeprefix(BOM)  # as written: a lone \r is refused
    names = [name.strip() for name in text.replace("\r\n", "\n").rstrip("\n").split("\n")]
    for line, name in enumerate(names, start=1):
        if not name:
            raise MNV4Error(f"--labels {path} has an empty line {line}: give one class name per line")
        if unsafe_characters(name):
            raise MNV4Error(f"--labels {path} line {line} holds a control or bidirectional character "
                            f"({printable(''.join(unsafe_characters(name)))}): class names are shown on terminals")
    return names


def default_output(request: ExportRequest, fmt: str, resolution: int) -> Path:
    parts = [f"mnv4_{request.variant}", f"r{resolution}", request.precision]
    parts += ["int8io"] if request.int8_io else []
    parts += [request.delegate] if request.delegate not in (None, *FORMATS[fmt].delegates[:1]) else []
    parts += [request.compute_units] if request.compute_units else []
    parts += [request.minimum_deployment_target] if request.minimum_deployment_target else []
    parts += [request.target_platform] if request.target_platform not in (None, DEFAULT_TARGET_PLATFORM) else []
    parts += ["nhwc"] if request.nhwc else []
    parts += ["image"] if request.image_input else []
    parts += ["dynamic"] if request.dynamic_batch else ([f"b{request.batch}"] if request.batch != 1 else [])
    return Path("_".join(parts) + FORMATS[fmt].suffix)


def check_request(fmt: str, request: ExportRequest) -> None:
    """Every option checked against the tables, the variant and the calibration images named, before any work."""
    check(fmt, request)
    get_spec(request.variant)  # an unknown variant is refused here, before any work
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
           step: Step = lambda message: None) -> Manifest:
    """Export, verify, and move the artifact, its stored reference and its manifest into place; returns the manifest.
    An artifact that fails its parity is not published: ParityFailed."""
    check_request(fmt, request)
    resolution = request.resolution or get_spec(request.variant).preprocessing.resolution
    output = Path(output or default_output(request, fmt, resolution))
    check_output(output, FORMATS[fmt], force)
    remove_stale_partials(output)
    labels = read_labels(request.labels) if request.labels else None
    step(f"building {request.variant}")
    model, preprocessing, weights = reference_model(request.variant, request.weights, request.resolution)
    if labels is not None and len(labels) != model.num_classes:
        raise MNV4Error(f"--labels {request.labels} names {len(labels)} classes; the model has {model.num_classes}")
    calibration = calibration_for(request, preprocessing) if request.precision_row.calibrated else None
    partial = partial_path(output)
    preprocessing_record = {"crop_pct": preprocessing.crop_pct, "interpolation": preprocessing.interpolation,
                            "mean": list(preprocessing.mean), "std": list(preprocessing.std)}
    description = Description(request.variant, preprocessing.resolution,
                              labels or (imagenet_class_names() if model.num_classes == 1000 else None),
                              preprocessing_record, _version(), request.image_input)
    try:
        facts, seconds = _write(fmt, model, request, preprocessing, calibration, partial, step, description)
        verification, reference = _verify(fmt, request, model, preprocessing, facts, partial, step)
        manifest = Manifest(
            format=fmt, artifact=output.name, sha256=sha256(partial), bytes=artifact_bytes(partial),
            variant=request.variant, resolution=preprocessing.resolution,
            batch=DYNAMIC if request.dynamic_batch else request.batch, precision=request.precision,
            num_classes=model.num_classes, labels=labels, calibration=calibration.record() if calibration else None,
            reference=reference.record(output, partial) if reference else None, model=_size(model, preprocessing),
            companions=_companions(partial, output),
            preprocessing=preprocessing_record,
            weights=weights, versions={"mnv4": _version(), "torch": torch.__version__, **facts.toolchain},
            export_seconds=round(seconds, 2), facts=facts.manifest_fields(), parity=verification)
        if verification.get("passed") is False:
            raise ParityFailed([f"{fmt} {request.precision} artifact fails parity: " + "; ".join(verification["failures"])])
        _publish(manifest, partial, output, stored_reference=reference is not None)
        return manifest
    except OSError as error:
        raise MNV4Error(f"cannot write {output}: {error.strerror or one_line(error)}") from None
    except Exception as error:
        # Toolchains report a full disk in their own words (a RuntimeError from a serialiser, say).
        if not isinstance(error, (MNV4Error, ParityFailed)) and disk_is_full(output.parent):
            raise MNV4Error(f"cannot write {output}: no space left on {output.parent}") from None
        raise
    finally:
        for leftover in (partial, manifest_path(partial), reference_path(partial), *companion_paths(partial).values()):
            remove_artifact(leftover)


def _write(fmt: str, model, request: ExportRequest, preprocessing, calibration: Calibration | None, partial: Path,
           step: Step, description: Description) -> tuple[ArtifactFacts, float]:
    """The artifact written at `partial` by its format's exporter, with `description` inside it where the exporter
    has a place for it: its facts and the seconds it took."""
    exporter = importlib.import_module(f"mnv4.export.{FORMATS[fmt].exporter}")
    example_batch = max(2, request.batch) if request.dynamic_batch else request.batch
    example = np.random.default_rng(0).standard_normal(
        (example_batch, 3, preprocessing.resolution, preprocessing.resolution)).astype(np.float32)
    images = calibration.images if calibration else None
    if request.image_input and not FORMATS[fmt].image_type:
        model = ImageInput(model, preprocessing.mean, preprocessing.std)
        example, images = (None if batch is None else
                           np.ascontiguousarray(pixels_of(batch, preprocessing.mean, preprocessing.std).transpose(0, 2, 3, 1))
                           for batch in (example, images))
    step(f"exporting {fmt} ({request.precision})")
    started = time.perf_counter()
    # Toolchains print their own progress on stdout, which belongs to `mnv4 export --json`.
    with contextlib.redirect_stdout(sys.stderr):
        facts = exporter.export(model, torch.from_numpy(example), partial, request, images, description)
    return facts, time.perf_counter() - started


def _verify(fmt: str, request: ExportRequest, model, preprocessing, facts: ArtifactFacts, partial: Path,
            step: Step) -> tuple[dict, Reference | None]:
    """The artifact's parity record, and the reference it was judged by (written beside it)."""
    if not request.verify:
        return {"passed": None, "status": "skipped (--no-verify)"}, None
    step(f"verifying {fmt} in its runtime on photos")
    batches = DYNAMIC_VERIFY_BATCHES if request.dynamic_batch else (request.batch,)
    reference = compute_reference(model, preprocessing, request.threads, max(batches))
    # An image input's pixels are recovered with the model's own mean and std: the manifest is written only later.
    normalisation = (preprocessing.mean, preprocessing.std)
    verification = verify_artifact(partial, reference, request.precision_row.limits_for(facts.compute_dtype), batches,
                                   request.threads, max_loss_points=request.max_accuracy_loss,
                                   normalisation=normalisation)
    if request.runtime and verification.get("passed"):
        verification = _verify_where_shipped(request, facts, partial, reference, batches, verification, step,
                                             normalisation)
    reference.write(partial)
    return verification, reference


def _verify_where_shipped(request: ExportRequest, facts: ArtifactFacts, partial: Path, reference: Reference, batches,
                          verification: dict, step: Step, normalisation: tuple) -> dict:
    """The CPU runtime's record with each runtime of `--runtime` judged too (under "runtimes"): the export passes
    only where every one of them does."""
    runtimes = {}
    for name in dict.fromkeys(request.runtime):
        step(f"verifying in {name}")
        runtimes[name] = verify_in_runtime(partial, name, reference, request.precision, facts.compute_dtype, batches,
                                           request.threads, request.max_accuracy_loss, normalisation)
    failures = [f"in {name}: " + with_known_issue("; ".join(record["failures"]), record)
                for name, record in runtimes.items() if not record["passed"]]
    return {**verification, "runtimes": runtimes,
            **({"passed": False, "failures": [*verification["failures"], *failures]} if failures else {})}


def _publish(manifest: Manifest, partial: Path, output: Path, stored_reference: bool) -> None:
    """The verified artifact, its companions, its reference and its manifest moved over whatever was at `output`,
    manifest last."""
    partial_manifest = manifest.write(partial)
    remove_artifact(manifest_path(output))
    remove_artifact(reference_path(output))
    for name, companion in companion_paths(partial).items():
        publish(companion, companion_paths(output)[name])
    publish(partial, output)
    if stored_reference:
        publish(reference_path(partial), reference_path(output))
    publish(partial_manifest, manifest_path(output))


def _companions(partial: Path, output: Path) -> dict | None:
    """The manifest's record of the files the exporter wrote beside the artifact: their published names and sha256."""
    written = companion_paths(partial)
    return {name: {"file": path.name, "sha256": sha256(written[name])}
            for name, path in companion_paths(output).items()} or None


def _size(model, preprocessing) -> dict:
    """What the bench needs to turn a latency into GFLOP/s where PyTorch is not installed."""
    from ..model.profile import profile

    return {"params": sum(p.numel() for p in model.parameters()),
            "macs": profile(model, (3, preprocessing.resolution, preprocessing.resolution)).macs}


def _version() -> str:
    from .. import __version__

    return __version__
