"""`mnv4 bench`: export the variant to every asked format, measure each artifact and PyTorch itself in a
fresh process, compare every output with the PyTorch reference, and write results.json + the report.

What to measure is planned in `plan`; this module measures it. It knows runtimes only through the worker
process that runs each row (and PyTorch for the reference), and artifacts only through the exporters."""
from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..artifact.files import artifact_bytes, remove_artifact
from ..artifact.formats import FORMATS, TORCH
from ..artifact.parity import row_parity
from ..errors import MissingExtraError, one_line
from .latency import summarise
from .plan import CUDA_BATCHES, BenchOptions, Row, check_options, plan
from .worker import timed_batch

JOB_TIMEOUT_SECONDS = 1200

# Told what is happening, and how many of how many rows are done.
Progress = Callable[[str, int, int], None]


class Bench:
    """One benchmark run: the reference, the artifacts, the measurements, in `output_dir`."""

    def __init__(self, options: BenchOptions, output_dir: Path, progress: Progress = lambda text, done, total: None):
        self.options = options
        self.output_dir = output_dir
        self.progress = progress
        self.work = output_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def run(self) -> dict:
        from ..export.verify import model_reference, reference_model
        from ..model.profile import profile
        from .machine import machine_info, versions

        options = self.options
        check_options(options)
        rows = plan(options)
        self.progress("building the reference model", 0, len(rows))
        model, preprocessing, weights = reference_model(options.variant, options.weights, options.resolution)
        self.model, self.preprocessing = model, preprocessing
        self.weights_path = self._save_weights(model)
        self.inputs_path = self.work / "inputs.npy"
        # For a model trained on mnv4's task (the fixture), every row's held-out accuracy too.
        self.reference = model_reference(model, preprocessing)
        self.inputs = self.reference.inputs
        np.save(self.inputs_path, self.inputs)
        if self.reference.task is not None:
            np.save(self.work / "task_inputs.npy", self.reference.task.images)
        self.progress("measuring the machine's fp32 FMA peak", 0, len(rows))
        machine = machine_info()
        self.cuda_available = machine["gpu"] is not None
        self.exports: dict[tuple, tuple] = {}
        # Repeats go round all rows again rather than rerunning a row at once, so that a slow spell of the
        # machine spreads over the rows instead of landing on one; an mnv4 row and its timm twin run back to
        # back, first one then the other in turn, so that each pair of their processes saw the same machine.
        twins = [list(group) for _, group in itertools.groupby(rows, key=Row.key)]
        total, done = len(rows) * options.repeats, 0
        for repeat in range(options.repeats):
            for group in twins:
                for row in group if repeat % 2 == 0 else reversed(group):
                    self.progress(f"{row.source} {row.runtime} {row.precision} threads={row.threads} "
                                  f"batch={row.batch}" + (f" (process {repeat + 1}/{options.repeats})"
                                                          if options.repeats > 1 else ""), done, total)
                    done += 1
                    if repeat == 0:
                        self._measure(row)
                    elif row.runs and row.status in ("ok", "parity-failed"):
                        self._measure_again(row)
        for group in twins:
            if len(group) == 2 and all(row.runs and row.runs[0]["times_ms"] for row in group) \
                    and group[0].device == "cpu":
                self.progress(f"ours/timm interleaved: {group[0].runtime} {group[0].precision}", total, total)
                self._compare(*group)
        macs = profile(model, (3, preprocessing.resolution, preprocessing.resolution)).macs
        return {
            "schema": "mnv4-bench/1",
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine,
            "versions": versions(),
            "options": {**{key: value for key, value in asdict(options).items() if key != "batches"},
                        "formats": list(options.formats), "precisions": list(options.precisions),
                        "threads": list(options.threads),
                        "batches": list(options.batches or (CUDA_BATCHES if options.device == "cuda" else (1,))),
                        "min_seconds": None if options.iterations else options.min_seconds,
                        "resolution": preprocessing.resolution, "weights_facts": weights},
            "model": {"variant": options.variant, "resolution": preprocessing.resolution, "macs": macs,
                      "params": sum(p.numel() for p in model.parameters())},
            "rows": finish_rows(rows, macs, machine["fma_peak_gflops_per_thread"]),
        }

    def _save_weights(self, model) -> Path:
        """The reference's weights as a file, so that every export and every worker uses exactly them."""
        from safetensors.torch import save_file

        path = self.work / "weights.safetensors"
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
        return path

    def _artifact(self, row: Row) -> tuple:
        """(path, export seconds, tolerance) of the row's artifact, exporting it on first use; raises
        what the export raised, for every row that needs the same artifact."""
        key = (row.source, row.format, row.precision, row.batch)
        if key not in self.exports:
            try:
                # The toolchains narrate each export step on stdout; the progress bar already says what runs.
                with contextlib.redirect_stdout(io.StringIO()):
                    self.exports[key] = (*self._export(row), None)
            except Exception as error:  # noqa: BLE001 (recorded for each row that needs this artifact)
                self.exports[key] = (None, None, None, error)
        path, seconds, tolerance, error = self.exports[key]
        if error is not None:
            raise error
        return path, seconds, tolerance

    def _export(self, row: Row) -> tuple:
        path = self.work / f"{row.source}_{row.format}_{row.precision}_b{row.batch}{FORMATS[row.format].suffix}"
        if row.source == "timm":
            import torch

            from .peers import export_peer

            example = torch.from_numpy(timed_batch(self.inputs, row.batch))
            remove_artifact(path)
            return path, export_peer(row.format, self.peer_model, example, path), "fp32"
        # Parity is measured by the benchmark itself, in the worker, on the same inputs as every other row.
        # The checkpoint given, when there is one: an int8 export of the trained fixture calibrates on its task.
        from ..export import ExportRequest, export

        weights = Path(self.options.weights) if self.options.weights else self.weights_path
        manifest = export(row.format, ExportRequest(variant=self.options.variant, weights=weights,
                                                    resolution=self.preprocessing.resolution,
                                                    precision=row.precision, batch=row.batch, verify=False),
                          path, force=True)
        return path, manifest.export_seconds, manifest.tolerance

    @functools.cached_property
    def peer_model(self):
        """timm's model with the reference's weights, built once for all its exports."""
        from .peers import timm_model

        return timm_model(self.options.variant, self.model.state_dict(), self.model.num_classes)

    def _measure(self, row: Row) -> None:
        try:
            if row.format != TORCH:
                row.artifact, row.export_seconds, row.tolerance = self._artifact(row)
        except MissingExtraError as error:
            row.status, row.reason = "unavailable", f"unavailable: install mnv4[{error.extra}]"
            return
        except Exception as error:  # noqa: BLE001 (a failed export fails its rows; the benchmark goes on)
            row.status, row.reason = "failed", f"export failed: {one_line(error)}"
            return
        if row.device == "cuda" and not self.cuda_available:
            row.status, row.reason = "unavailable", "unavailable: no CUDA device on this machine"
            return
        if row.format == TORCH and row.precision != "fp32":
            row.tolerance = "fp16-arithmetic"  # PyTorch computes in the reduced precision itself
        result = self._run_worker(row)
        if "status" in result:
            row.status, row.reason = result["status"], result["reason"]
            return
        row.runs.append(result)
        logits = np.load(self.work / "logits.npy")
        is_reference = row.source == "mnv4" and row.format == TORCH and row.mode == "eager" \
            and row.device == "cpu" and row.precision == "fp32"
        if not is_reference:
            task_logits = np.load(self.work / "task_logits.npy") if self.reference.task is not None else None
            judge_row(row, self.reference, logits, task_logits)
        if not result["measures_latency"] and row.status == "ok":
            row.status, row.reason = "latency-not-measured", \
                "latency: macOS only (parity from the Core ML program interpreter)"

    def _measure_again(self, row: Row) -> None:
        """Another fresh process for a measured row; its parity was settled by the first."""
        result = self._run_worker(row)
        if "status" in result:
            row.status, row.reason = "failed", f"process {len(row.runs) + 1}: {result['reason']}"
        else:
            row.runs.append(result)

    def _compare(self, ours: Row, theirs: Row) -> None:
        """ours/timm timed call by call, in two processes: one loads ours first, the other timm's. On this
        VM the runner loaded first runs up to 1 % faster (two LiteRT files of one graph: 0.991 to 0.997 one
        way round, 1.004 to 1.013 the other), a bias that the geometric mean of the two orders cancels."""
        ratios = []
        for first, second in ((ours, theirs), (theirs, ours)):
            result = self._spawn({"compare": [self._job(first), self._job(second)]}, ours.threads)
            if "ratio" not in result:
                return
            ratios.append(result["ratio"])
        ours.interleaved_ratio = float(np.sqrt(ratios[0] / ratios[1]))

    def _run_worker(self, row: Row) -> dict:
        return self._spawn(self._job(row), row.threads)

    def _job(self, row: Row) -> dict:
        options = self.options
        return {
            "runner": "torch" if row.format == TORCH else "artifact",
            "path": str(row.artifact) if row.artifact else None,
            "source": row.source, "variant": options.variant, "weights": str(self.weights_path),
            "num_classes": self.model.num_classes, "mode": row.mode, "device": row.device,
            "precision": row.precision, "threads": row.threads or 1, "batch": row.batch,
            "inputs": str(self.inputs_path), "logits": str(self.work / "logits.npy"),
            "task_inputs": str(self.work / "task_inputs.npy") if self.reference.task is not None else None,
            "task_logits": str(self.work / "task_logits.npy"),
            "warmup": options.warmup, "iterations": options.iterations, "min_seconds": options.min_seconds,
        }

    def _spawn(self, job: dict, threads: int | None) -> dict:
        return spawn_worker(job, threads, self.work)


def spawn_worker(job: dict, threads: int | None, work: Path) -> dict:
    """Run one job in a fresh `python -m mnv4.bench.worker` process; its result, or why it has none."""
    with tempfile.TemporaryDirectory(dir=work) as folder:
        job_path, result_path = Path(folder) / "job.json", Path(folder) / "result.json"
        job_path.write_text(json.dumps(job))
        # Each library's own thread pools follow the row's thread count, also the ones it never sets.
        threads = str(threads or os.cpu_count())
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        try:
            process = subprocess.run([sys.executable, "-m", "mnv4.bench.worker", str(job_path), str(result_path)],
                                     capture_output=True, text=True, env=env, timeout=JOB_TIMEOUT_SECONDS,
                                     check=False)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {JOB_TIMEOUT_SECONDS} s"}
        if not result_path.exists():
            last = (process.stderr.strip().splitlines() or ["no output"])[-1]
            return {"status": "failed", "reason": f"worker exited with code {process.returncode}: {last}"}
        return json.loads(result_path.read_text())


def judge_row(row: Row, reference, logits: np.ndarray, task_logits: np.ndarray | None) -> None:
    """The row's parity with the reference, and its status when that fails."""
    parity = row_parity(reference, logits, row.tolerance, task_logits)
    failures = parity.pop("failures")
    row.parity = parity
    if failures:
        row.status, row.reason = "parity-failed", "; ".join(failures)


def finish_rows(rows: list[Row], macs: int | None, fma_peak_per_thread: float | None) -> list[dict]:
    """Rows as results.json has them: latency over the timed calls of all the row's processes, load and
    first inference as their medians, the largest peak memory, throughput, GFLOP/s, fraction of peak and
    the ours/timm ratio."""
    latencies = {id(row): _pooled_latency(row.runs) for row in rows}
    timm_rows = {row.key(): row for row in rows if row.source == "timm"}
    fp32_medians = {_same_but_precision(row): latencies[id(row)]["median"] for row in rows
                    if row.precision == "fp32" and latencies[id(row)]}
    finished = []
    for row in rows:
        latency = latencies[id(row)]
        median_s = latency["median"] / 1e3 if latency else None
        gflops = 2 * macs * row.batch / median_s / 1e9 if median_s and macs else None
        peer = timm_rows.get(row.key()) if row.source == "mnv4" else None
        fp32_median = fp32_medians.get(_same_but_precision(row)) if row.precision != "fp32" else None
        finished.append({
            "source": row.source, "format": row.format, "runtime": row.runtime, "device": row.device,
            "precision": row.precision, "threads": row.threads if row.device == "cpu" else None, "batch": row.batch,
            "status": row.status, "reason": row.reason, "latency_ms": latency,
            "load_ms": _median_of(row.runs, "load_ms"), "first_inference_ms": _median_of(row.runs, "first_inference_ms"),
            "throughput_ips": row.batch / median_s if median_s else None,
            "peak_rss_mb": max((run["peak_rss_mb"] for run in row.runs), default=None),
            "artifact_bytes": _bytes(row.artifact), "export_seconds": row.export_seconds,
            "parity": row.parity, "gflops": gflops,
            "peak_fraction": gflops / (fma_peak_per_thread * row.threads)
            if gflops and fma_peak_per_thread and row.device == "cpu" else None,
            "ratio_vs_timm": _ratio_vs_timm(row, peer) if peer and latency and latencies[id(peer)] else None,
            "speedup_vs_fp32": fp32_median / latency["median"] if fp32_median and latency else None,
            "execution": row.runs[0]["execution"] if row.runs else None,
        })
    return finished


def _same_but_precision(row: Row) -> tuple:
    """What identifies a row's float32 twin: the same source, format, runtime, device, threads, batch and mode."""
    return row.source, row.format, row.runtime, row.device, row.threads, row.batch, row.mode


def _pooled_latency(runs: list[dict]) -> dict | None:
    times = [time for run in runs for time in run["times_ms"] or ()]
    return {**summarise(times), "processes": len(runs)} if times else None


def _ratio_vs_timm(ours: Row, theirs: Row) -> float:
    """ours/timm: timed call by call in one process where that ran (CPU rows), else the median over the
    back-to-back process pairs of their median latencies, so that a change of machine speed cancels out."""
    if ours.interleaved_ratio is not None:
        return ours.interleaved_ratio
    return float(np.median([np.median(a["times_ms"]) / np.median(b["times_ms"])
                            for a, b in zip(ours.runs, theirs.runs)]))


def _median_of(runs: list[dict], key: str) -> float | None:
    return float(np.median([run[key] for run in runs])) if runs else None


def _bytes(path: Path | None) -> int | None:
    return artifact_bytes(path) if path is not None and path.exists() else None


def bench(options: BenchOptions, output_dir: Path, progress: Progress = lambda text, done, total: None) -> dict:
    """Run the benchmark and write results.json, report.md and report.html into `output_dir`."""
    from .report import write_report
    from .results import write_results

    output_dir.mkdir(parents=True, exist_ok=True)
    results = Bench(options, output_dir, progress).run()
    write_results(results, output_dir / "results.json")
    progress("writing the report", len(results["rows"]), len(results["rows"]))
    write_report([results], output_dir)
    return results


def strict_failures(results: dict) -> list[str]:
    """What --strict fails on: rows that failed or breach parity."""
    from .results import describe_row

    return [f"{describe_row(row)}: {row['status']}: {row['reason']}" for row in results["rows"]
            if row["status"] in ("failed", "parity-failed")]
