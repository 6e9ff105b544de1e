"""`mnv4 bench-artifacts PATHS` (older spelling: `mnv4 bench --artifacts DIR`): measure artifacts exported elsewhere,
without PyTorch.

Where `mnv4 bench` exports the variant itself, this takes what `mnv4 export` wrote (each artifact with its
manifest and stored reference) and measures each in a fresh worker process, as the bench does, judging its
logits against the stored reference by the same rule. It runs on the runtime-only install (`mnv4[runtime]`): a
phone under Termux, an ARM board, an emulated ARM root. Its results.json has the bench's schema, so `mnv4 report`
merges it with any other machine's."""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import schema
from ..artifact.formats import FORMATS, runtime_of
from ..artifact.manifest import Manifest, manifest_path, read_manifest, unchanged
from ..artifact.precisions import FP16
from ..artifact.reference import Reference, read_reference
from ..errors import MissingExtraError, MNV4Error
from ..runtimes import recorded_runtime
from .measure import (
    Progress,
    finish_rows,
    is_measured,
    measure_again,
    measure_and_report,
    measure_row,
    timing_of,
)
from .plan import CPU_RUNTIMES, Measurement, Row, check_measurement, check_runtimes, runtimes_of
from .results import Status, results_document, unavailable_reason
from .worker import WorkerJob


@dataclass(frozen=True, kw_only=True)
class ArtifactBenchOptions(Measurement):
    runtimes: tuple[str, ...] = (CPU_RUNTIMES,)  # rows of RUNTIMES, or each format's CPU runtime
    xnnpack_fp16: bool = False  # fp16 TFLite artifacts: XNNPACK's float16 arithmetic where the CPU has it
    machine_name: str | None = None  # the machine's label in reports (default: hostname-os-arch)

    def record(self) -> dict:
        return {**super().record(), "runtimes": list(self.runtimes), "xnnpack_fp16": self.xnnpack_fp16}


@dataclass(frozen=True)
class Found:
    path: Path
    manifest: Manifest
    reference: Reference
    changes: tuple[str, ...] = ()  # how it differs from what its export wrote (taken with allow_modified)


def find_artifacts(paths: list[Path], allow_modified: bool = False) -> list[Found]:
    """The artifacts named, or found in the folders named (each with a manifest beside it), checked before
    anything runs: each is what its export wrote (unless `allow_modified`: then `changes` says how not), has its
    stored reference,
    and all are of one model (variant, resolution, weights), the unit of a results file."""
    suffixes = tuple(row.suffix for row in FORMATS.values())
    candidates = []
    for path in paths:
        if path.is_dir() and path.suffix != ".mlpackage":
            candidates += sorted(p for p in path.iterdir() if p.name.endswith(suffixes) and not p.name.startswith(".")
                                 and manifest_path(p).is_file())
        elif path.exists():
            candidates.append(path)
        else:
            raise MNV4Error(f"not found: {path}")
    if not candidates:
        raise MNV4Error(f"no artifacts with manifests in {', '.join(map(str, paths))}; export them with `mnv4 export`")
    found = []
    for path in candidates:
        manifest = read_manifest(path, allow_modified)
        changes = tuple(unchanged(path, manifest, allow_modified))
        found.append(Found(path, manifest, read_reference(path, manifest), changes))
    rows = {}
    for item in found:
        identity = row_of(item, 1).key()
        if identity in rows:
            raise MNV4Error(f"{rows[identity].name} and {item.path.name} would be the same row of the results "
                            f"({item.manifest.format} {item.manifest.precision} batch {item.manifest.batch}); bench "
                            f"them from separate folders")
        rows[identity] = item.path
    models = {(f.manifest.variant, f.manifest.resolution, f.manifest.weights.get("sha256") or
               f.manifest.weights.get("seed")) for f in found}
    if len(models) > 1:
        described = ", ".join(sorted(f"{variant} at {resolution} px" for variant, resolution, _ in models))
        raise MNV4Error(f"the artifacts are of {len(models)} models ({described}, or other weights); a results file "
                        f"holds one: bench each model's folder on its own, then merge with `mnv4 report`")
    return found


def row_of(found: Found, threads: int, runtime: str | None = None) -> Row:
    """The row of an artifact in `runtime` (default: its format's CPU runtime) at a thread count; unavailable where
    its runtime is not installed here."""
    manifest = found.manifest
    row = runtime_of(found.path, runtime)
    try:
        name, status, reason = recorded_runtime(found.path, row.name), Status.OK, None
    except MissingExtraError as error:
        name, status, reason = row.name, Status.UNAVAILABLE, unavailable_reason(error)
    return Row("mnv4", manifest.format, name, row.device, manifest.precision, threads,
               1 if manifest.dynamic_batch else manifest.batch, artifact=found.path, compute_dtype=manifest.compute_dtype,
               export_seconds=manifest.export_seconds, status=status, reason=reason, runtime_row=row.name)


def check_artifact_options(options: ArtifactBenchOptions) -> None:
    """Bad options are one-line errors before anything runs."""
    check_measurement(options)
    check_runtimes(options.runtimes)
    if options.machine_name is not None and not schema.text(64).accepts(options.machine_name):
        raise MNV4Error(f"--machine-name must be {schema.text(64).description}, not {schema.shown(options.machine_name)}")


def bench_artifacts(found: list[Found], options: ArtifactBenchOptions, output_dir: Path,
                    progress: Progress = lambda text, done, total: None) -> dict:
    """Measure every artifact (from `find_artifacts`) at every thread count, in `repeats` processes each, and
    write results.json, report.md and report.html."""
    return measure_and_report(output_dir, lambda: _measure_artifacts(found, options, output_dir / "work", progress),
                              progress)


def _measure_artifacts(found: list[Found], options: ArtifactBenchOptions, work: Path, progress: Progress) -> dict:
    """Every artifact measured at every thread count: the results document."""
    from .machine import machine_info

    work.mkdir(parents=True, exist_ok=True)
    progress("reading the machine", 0, len(found) * len(options.threads))
    machine = machine_info()
    if options.machine_name:
        machine["id"] = options.machine_name
    jobs = [(row_of(item, job.threads, job.runtime), job, item.reference) for index, item in enumerate(found)
            for job in _jobs(item, index, options, work)]
    if not jobs:
        raise MNV4Error(f"none of the artifacts runs in {', '.join(options.runtimes)}")
    total = len(jobs) * options.repeats
    for repeat in range(options.repeats):
        for done, (row, job, reference) in enumerate(jobs, start=repeat * len(jobs)):
            progress(f"{row.artifact.name} {row.runtime} threads={row.threads}", done, total)
            if repeat == 0 and row.status is Status.OK:
                measure_row(row, job, reference, work)
            elif is_measured(row):
                measure_again(row, job, work)
    first = found[0].manifest
    size = first.model or {}
    return results_document(
        machine, {**options.record(), "variant": first.variant, "device": "cpu", "weights": first.weights,
                  "formats": list(dict.fromkeys(f.manifest.format for f in found)),
                  "precisions": list(dict.fromkeys(f.manifest.precision for f in found)),
                  "batches": sorted({row.batch for row, _, _ in jobs}), "resolution": first.resolution,
                  "compare_timm": False, "artifacts": [f.path.name for f in found],
                  "command": shlex.join(["mnv4", *sys.argv[1:]])},
        {"variant": first.variant, "resolution": first.resolution, "macs": size.get("macs"), "params": size.get("params")},
        finish_rows([row for row, _, _ in jobs], size.get("macs"), machine["fma_peak_gflops_per_thread"],
                    options.latency))


def _jobs(item: Found, index: int, options: ArtifactBenchOptions, work: Path) -> list[WorkerJob]:
    """The worker jobs of one artifact, one per runtime that --runtimes names for its format and thread count, its
    inputs saved once for all of them."""
    inputs, task_inputs = work / f"inputs_{index}.npy", work / f"task_inputs_{index}.npy"
    np.save(inputs, item.reference.inputs)
    if item.reference.task is not None:
        np.save(task_inputs, item.reference.task.images)
    manifest = item.manifest
    # fp16 artifacts only: the flag forces every float operator of a file to float16, fp32 ones too
    forced = options.xnnpack_fp16 and manifest.format == "tflite" and manifest.precision == FP16.name
    cpu = FORMATS[manifest.format].runtimes[0]
    return [WorkerJob(inputs=str(inputs), timing=timing_of(runtime, options.timing), threads=threads,
                      batch=1 if manifest.dynamic_batch else manifest.batch, path=str(item.path), runtime=runtime,
                      runner_options={"xnnpack_fp16": True} if forced and runtime == cpu else {},
                      task_inputs=str(task_inputs) if item.reference.task is not None else None)
            for runtime in runtimes_of(manifest.format, options.runtimes) for threads in options.threads]
