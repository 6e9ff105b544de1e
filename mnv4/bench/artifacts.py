"""`mnv4 bench --artifacts DIR`: measure artifacts exported elsewhere, without PyTorch.

Where `mnv4 bench` exports the variant itself, this takes what `mnv4 export` wrote (each artifact with its
manifest and stored reference) and measures each in a fresh worker process, as the bench does, judging its
logits against the stored reference by the same rule. It runs on the runtime-only install (`mnv4[runtime]`): a
phone under Termux, an ARM board, an emulated ARM root. Its results.json has the bench's schema, so `mnv4 report`
merges it with any other machine's."""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..artifact.formats import FORMATS
from ..artifact.manifest import Manifest, manifest_path, read_manifest
from ..artifact.parity import tolerance_for
from ..artifact.reference import Reference, read_reference
from ..errors import MNV4Error
from ..runtimes import runner_class
from .plan import Row
from .run import Progress, finish_rows, judge_row, spawn_worker


@dataclass(frozen=True)
class ArtifactBenchOptions:
    threads: tuple[int, ...] = (1,)
    warmup: int = 10
    repeats: int = 1
    iterations: int | None = None
    min_seconds: float | None = 2.0
    xnnpack_fp16: bool = False  # TFLite artifacts: XNNPACK's float16 arithmetic where the CPU has it
    machine_name: str | None = None  # the machine's label in reports (default: hostname-os-arch)


@dataclass(frozen=True)
class Found:
    path: Path
    manifest: Manifest
    reference: Reference


def find_artifacts(paths: list[Path]) -> list[Found]:
    """The artifacts named, or found in the folders named (each with a manifest beside it), checked before
    anything runs: each has its stored reference, and all are of one model (variant, resolution, weights), the
    unit of a results file."""
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
        manifest = read_manifest(path)
        found.append(Found(path, manifest, read_reference(path, manifest.reference)))
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


def row_of(found: Found, threads: int) -> Row:
    manifest = found.manifest
    return Row("mnv4", manifest.format, runner_class(found.path).runtime, "cpu", manifest.precision, threads,
               1 if manifest.dynamic_batch else manifest.batch, artifact=found.path, tolerance=manifest.tolerance,
               export_seconds=manifest.export_seconds)


def bench_artifacts(found: list[Found], options: ArtifactBenchOptions, output_dir: Path,
                    progress: Progress = lambda text, done, total: None) -> dict:
    """Measure every artifact (from `find_artifacts`) at every thread count and write results.json, report.md
    and report.html."""
    from .machine import machine_info, versions
    from .report import write_report
    from .results import write_results

    work = output_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    progress("reading the machine", 0, len(found) * len(options.threads))
    machine = machine_info()
    if options.machine_name:
        machine["id"] = options.machine_name
    rows, done = [], 0
    for index, item in enumerate(found):
        inputs, task_inputs = work / f"inputs_{index}.npy", work / f"task_inputs_{index}.npy"
        np.save(inputs, item.reference.inputs)
        if item.reference.task is not None:
            np.save(task_inputs, item.reference.task.images)
        for threads in options.threads:
            row = row_of(item, threads)
            progress(f"{item.path.name} threads={threads}", done, len(found) * len(options.threads))
            done += 1
            job = {"runner": "artifact", "path": str(item.path), "device": "cpu", "threads": threads,
                   "batch": row.batch, "inputs": str(inputs), "logits": str(work / "logits.npy"),
                   "task_inputs": str(task_inputs) if item.reference.task is not None else None,
                   "task_logits": str(work / "task_logits.npy"), "warmup": options.warmup,
                   "iterations": options.iterations, "min_seconds": options.min_seconds,
                   # fp16 artifacts only: the flag forces every float operator of a file to float16, fp32 ones too
                   "runner_options": {"xnnpack_fp16": True} if options.xnnpack_fp16 and item.manifest.format == "tflite"
                   and item.manifest.precision == "fp16" else {}}
            for _ in range(options.repeats):
                result = spawn_worker(job, threads, work)
                if "status" in result:
                    row.status, row.reason = result["status"], result["reason"]
                    break
                row.runs.append(result)
            if row.status == "ok":
                row.tolerance = tolerance_for(item.manifest.precision,
                                              row.runs[0]["compute_dtype"] or item.manifest.compute_dtype)
                task_logits = np.load(work / "task_logits.npy") if item.reference.task is not None else None
                try:
                    judge_row(row, item.reference, np.load(work / "logits.npy"), task_logits)
                except MNV4Error as error:  # not the artifact of its reference: this row fails, the bench goes on
                    row.status, row.reason = "failed", str(error)
                if not row.runs[0]["measures_latency"] and row.status == "ok":
                    row.status, row.reason = "latency-not-measured", \
                        "latency: macOS only (parity from the Core ML program interpreter)"
            rows.append(row)
    first = found[0].manifest
    size = first.model or {}
    results = {
        "schema": "mnv4-bench/1",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "versions": versions(),
        "options": {"variant": first.variant, "formats": list(dict.fromkeys(f.manifest.format for f in found)),
                    "precisions": list(dict.fromkeys(f.manifest.precision for f in found)),
                    "threads": list(options.threads), "batches": sorted({row.batch for row in rows}), "device": "cpu",
                    "warmup": options.warmup, "iterations": options.iterations,
                    "min_seconds": None if options.iterations else options.min_seconds, "weights": first.weights,
                    "resolution": first.resolution, "compare_timm": False, "repeats": options.repeats,
                    "artifacts": [f.path.name for f in found], "xnnpack_fp16": options.xnnpack_fp16,
                    "command": shlex.join(["mnv4", *sys.argv[1:]])},
        "model": {"variant": first.variant, "resolution": first.resolution, "macs": size.get("macs"),
                  "params": size.get("params")},
        "rows": finish_rows(rows, size.get("macs"), machine["fma_peak_gflops_per_thread"]),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    write_results(results, output_dir / "results.json")
    progress("writing the report", len(rows), len(rows))
    write_report([results], output_dir)
    return results
