"""`mnv4 bench`: export the variant to every asked format, measure each artifact and PyTorch itself in a
fresh process, compare every output with the PyTorch reference, and write results.json + the report.

What to measure is planned in `plan`; how a row is measured is `measure`'s, shared with `bench-artifacts`. This
module knows runtimes only through the worker process that runs each row (and PyTorch for the reference), and
artifacts only through the exporters."""
from __future__ import annotations

import contextlib
import functools
import io
import itertools
from pathlib import Path

import numpy as np

from ..artifact.files import remove_artifact
from ..artifact.formats import FORMATS, TORCH
from ..artifact.options import ExportRequest
from ..artifact.precisions import FP32, PRECISIONS
from ..errors import MissingExtraError, one_line
from .measure import (
    Progress,
    emulated,
    finish_rows,
    is_measured,
    measure_again,
    measure_and_report,
    measure_row,
    run_worker,
    timing_of,
)
from .plan import BenchOptions, Row, check_options, plan
from .results import Status, results_document, unavailable_reason
from .worker import WorkerJob, timed_batch


class Bench:
    """One benchmark run: the reference, the artifacts, the measurements, in `output_dir`."""

    def __init__(self, options: BenchOptions, output_dir: Path, progress: Progress = lambda text, done, total: None):
        self.options = options
        self.output_dir = output_dir
        self.progress = progress
        self.work = output_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.exports: dict[tuple, tuple] = {}

    def run(self) -> dict:
        from ..model.profile import profile
        from .machine import machine_info

        options = self.options
        check_options(options)
        rows = plan(options)
        self.progress("building the reference model", 0, len(rows))
        self._prepare_reference()
        self.progress("measuring the machine's fp32 FMA peak", 0, len(rows))
        machine = machine_info()
        self.cuda_available = machine["gpu"] is not None
        twins = self._measure_all(rows)
        for group in twins:
            if len(group) == 2 and all(row.runs and row.runs[0]["times_ms"] for row in group) \
                    and group[0].device == "cpu" and not emulated(group[0]):
                self.progress(f"ours/timm interleaved: {group[0].runtime} {group[0].precision}", len(rows), len(rows))
                self._compare(*group)
        resolution = self.preprocessing.resolution
        macs = profile(self.model, (3, resolution, resolution)).macs
        return results_document(
            machine, {**options.record(), "resolution": resolution, "weights_facts": self.weights_facts},
            {"variant": options.variant, "resolution": resolution, "macs": macs,
             "params": sum(p.numel() for p in self.model.parameters())},
            finish_rows(rows, macs, machine["fma_peak_gflops_per_thread"], options.latency))

    def _prepare_reference(self) -> None:
        """The reference model, its weights as a file every export and worker uses, and its numbers: for a model
        trained on mnv4's task (the fixture), every row's held-out accuracy too."""
        from ..verification.reference import compute_reference, reference_model

        options = self.options
        self.model, self.preprocessing, self.weights_facts = reference_model(options.variant, options.weights,
                                                                             options.resolution)
        self.weights_path = self._save_weights(self.model)
        self.reference = compute_reference(self.model, self.preprocessing)
        self.inputs_path = self.work / "inputs.npy"
        np.save(self.inputs_path, self.reference.inputs)
        self.task_inputs_path = None
        if self.reference.task is not None:
            self.task_inputs_path = self.work / "task_inputs.npy"
            np.save(self.task_inputs_path, self.reference.task.images)

    def _measure_all(self, rows: list[Row]) -> list[list[Row]]:
        """Every row, in `repeats` processes each; returns the rows grouped with their timm twins.

        Repeats go round all rows again rather than rerunning a row at once, so that a slow spell of the machine
        spreads over the rows instead of landing on one; an mnv4 row and its timm twin run back to back, first one
        then the other in turn, so that each pair of their processes saw the same machine."""
        twins = [list(group) for _, group in itertools.groupby(rows, key=Row.key)]
        repeats = self.options.repeats
        total, done = len(rows) * repeats, 0
        for repeat in range(repeats):
            for group in twins:
                for row in group if repeat % 2 == 0 else reversed(group):
                    self.progress(f"{row.source} {row.runtime} {row.precision} threads={row.threads} batch={row.batch}"
                                  + (f" (process {repeat + 1}/{repeats})" if repeats > 1 else ""), done, total)
                    done += 1
                    if repeat == 0:
                        self._measure(row)
                    elif is_measured(row):
                        measure_again(row, self._job(row), self.work)
        return twins

    def _save_weights(self, model) -> Path:
        """The reference's weights as a file, so that every export and every worker uses exactly them."""
        from safetensors.torch import save_file

        path = self.work / "weights.safetensors"
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
        return path

    def _artifact(self, row: Row) -> tuple:
        """(path, export seconds, compute dtype) of the row's artifact, exporting it on first use; raises
        what the export raised, for every row that needs the same artifact."""
        key = (row.source, row.format, row.precision, row.batch)
        if key not in self.exports:
            try:
                # The toolchains narrate each export step on stdout; the progress bar already says what runs.
                with contextlib.redirect_stdout(io.StringIO()):
                    self.exports[key] = (*self._export(row), None)
            except Exception as error:  # noqa: BLE001 (recorded for each row that needs this artifact)
                self.exports[key] = (None, None, None, error)
        path, seconds, compute_dtype, error = self.exports[key]
        if error is not None:
            raise error
        return path, seconds, compute_dtype

    def _export(self, row: Row) -> tuple:
        path = self.work / f"{row.source}_{row.format}_{row.precision}_b{row.batch}{FORMATS[row.format].suffix}"
        if row.source == "timm":
            import torch

            from .peers import export_peer

            example = torch.from_numpy(timed_batch(self.reference.inputs, row.batch))
            remove_artifact(path)
            return path, export_peer(row.format, self.peer_model, example, path), FP32.compute_dtype
        # Parity is measured by the benchmark itself, in the worker, on the same inputs as every other row.
        # The checkpoint given, when there is one: an int8 export of the trained fixture calibrates on its task.
        from ..export.pipeline import export

        weights = Path(self.options.weights) if self.options.weights else self.weights_path
        manifest = export(row.format, ExportRequest(variant=self.options.variant, weights=weights,
                                                    resolution=self.preprocessing.resolution,
                                                    precision=row.precision, batch=row.batch, verify=False),
                          path, force=True)
        return path, manifest.export_seconds, manifest.compute_dtype

    @functools.cached_property
    def peer_model(self):
        """timm's model with the reference's weights, built once for all its exports."""
        from .peers import timm_model

        return timm_model(self.options.variant, self.model.state_dict(), self.model.num_classes)

    def _measure(self, row: Row) -> None:
        try:
            if row.format == TORCH:
                row.compute_dtype = PRECISIONS[row.precision].torch_dtype  # PyTorch computes in the precision itself
            else:
                row.artifact, row.export_seconds, row.compute_dtype = self._artifact(row)
        except MissingExtraError as error:
            row.status, row.reason = Status.UNAVAILABLE, unavailable_reason(error)
            return
        except Exception as error:  # noqa: BLE001 (a failed export fails its rows; the benchmark goes on)
            row.status, row.reason = Status.FAILED, f"export failed: {one_line(error)}"
            return
        if row.device == "cuda" and not self.cuda_available:
            row.status, row.reason = Status.UNAVAILABLE, "unavailable: no CUDA device on this machine"
            return
        is_reference = (row.source, row.format, row.mode, row.device, row.precision) == \
            ("mnv4", TORCH, "eager", "cpu", FP32.name)
        measure_row(row, self._job(row), None if is_reference else self.reference, self.work)

    def _compare(self, ours: Row, theirs: Row) -> None:
        """ours/timm timed call by call, in two processes: one loads ours first, the other timm's. On this
        VM the runner loaded first runs up to 1 % faster (two LiteRT files of one graph: 0.991 to 0.997 one
        way round, 1.004 to 1.013 the other), a bias that the geometric mean of the two orders cancels."""
        ratios = []
        for first, second in ((ours, theirs), (theirs, ours)):
            result, _, _ = run_worker({"compare": [self._job(first).as_dict(), self._job(second).as_dict()]},
                                      ours.threads, self.work)
            if "ratio" not in result:
                return
            ratios.append(result["ratio"])
        ours.interleaved_ratio = float(np.sqrt(ratios[0] / ratios[1]))

    def _job(self, row: Row) -> WorkerJob:
        options = self.options
        return WorkerJob(inputs=str(self.inputs_path), timing=timing_of(row.runtime_row, options.timing),
                         threads=row.threads or 1, batch=row.batch, device=row.device,
                         path=str(row.artifact) if row.artifact else None, runtime=row.runtime_row, source=row.source,
                         variant=options.variant, weights=str(self.weights_path), num_classes=self.model.num_classes,
                         mode=row.mode, precision=row.precision,
                         task_inputs=str(self.task_inputs_path) if self.task_inputs_path else None)


def bench(options: BenchOptions, output_dir: Path, progress: Progress = lambda text, done, total: None) -> dict:
    """Run the benchmark and write results.json, report.md and report.html into `output_dir`."""
    return measure_and_report(output_dir, lambda: Bench(options, output_dir, progress).run(), progress)
