"""Measuring rows, for `mnv4 bench` and `mnv4 bench-artifacts` alike: one fresh worker process per measurement,
the row's logits judged against the reference, and the rows as results.json has them.

Each process gets a private folder for its job, its result and its logits, so that two benches writing to one
output folder never read each other's numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifact.files import artifact_bytes, claimed
from ..artifact.formats import RUNTIMES
from ..artifact.parity import row_parity, with_known_issue
from ..artifact.precisions import FP32, PRECISIONS
from ..artifact.reference import Reference
from ..errors import MNV4Error
from .latency import median_of_process_means, summarise
from .plan import Row
from .results import LATENCY_STATISTICS, Status
from .worker import Timing, WorkerJob

JOB_TIMEOUT_SECONDS = 1200
COREML_LATENCY = "latency: macOS only (parity from the Core ML program interpreter)"

# Rows on software devices here (a GPU emulated by Mesa's lavapipe or SwiftShader, headless Chromium): their speed is
# not a device's, so a few calls are timed, not seconds of them.
EMULATED_TIMING = Timing(warmup=1, iterations=3, min_seconds=None)

# Told what is happening, and how many of how many rows are done.
Progress = Callable[[str, int, int], None]


def measure_and_report(output_dir: Path, measure: Callable[[], dict], progress: Progress) -> dict:
    """`measure()`'s results, measured while this run alone holds `output_dir`, and written there: results.json,
    report.md and report.html."""
    from .report import write_report
    from .results import write_results

    with claimed(output_dir, "the output folder"):
        results = measure()
        write_results(results, output_dir / "results.json")
        progress("writing the report", len(results["rows"]), len(results["rows"]))
        write_report([results], output_dir)
    return results


def emulated(row: Row) -> bool:
    return row.runtime_row is not None and RUNTIMES[row.runtime_row].emulated


def timing_of(runtime: str | None, timing: Timing) -> Timing:
    """How a row in `runtime` (a row of RUNTIMES; None: PyTorch) is timed: as asked, or briefly where its device is
    emulated."""
    return EMULATED_TIMING if runtime is not None and RUNTIMES[runtime].emulated else timing


def run_worker(job: WorkerJob | dict, threads: int | None, work: Path) -> tuple[dict, np.ndarray | None,
                                                                                   np.ndarray | None]:
    """Run one job (a WorkerJob, or a {"compare": [two jobs]} document) in a fresh `python -m mnv4.bench.worker`
    process: its result (or why it has none: "status" and "reason"), its logits and its held-out logits."""
    with tempfile.TemporaryDirectory(dir=work) as folder:
        folder = Path(folder)
        document = job if isinstance(job, dict) else {**job.as_dict(), "logits": str(folder / "logits.npy"),
                                                      "task_logits": str(folder / "task_logits.npy")}
        (folder / "job.json").write_text(json.dumps(document))
        result_path = folder / "result.json"
        # Each library's own thread pools follow the row's thread count, also the ones it never sets.
        threads = str(threads or os.cpu_count())
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        try:
            process = subprocess.run([sys.executable, "-m", "mnv4.bench.worker", str(folder / "job.json"),
                                      str(result_path)], capture_output=True, text=True, env=env,
                                     timeout=JOB_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            return {"status": Status.FAILED, "reason": f"timed out after {JOB_TIMEOUT_SECONDS} s"}, None, None
        if not result_path.exists():
            last = (process.stderr.strip().splitlines() or ["no output"])[-1]
            return {"status": Status.FAILED, "reason": f"worker exited with code {process.returncode}: {last}"}, None, None
        logits, task_logits = (np.load(path) if path.exists() else None
                               for path in (folder / "logits.npy", folder / "task_logits.npy"))
        return json.loads(result_path.read_text()), logits, task_logits


def measure_row(row: Row, job: WorkerJob, reference: Reference | None, work: Path) -> None:
    """The row's first process: its latency, and its logits judged against `reference` (None: the row is the
    reference itself)."""
    result, logits, task_logits = run_worker(job, row.threads, work)
    if "status" in result:
        row.status, row.reason = Status(result["status"]), result["reason"]
        return
    row.runs.append(result)
    if reference is not None:
        try:
            judge_row(row, reference, logits, task_logits, result["compute_dtype"])
        except MNV4Error as error:  # not the artifact of its reference: this row fails, the bench goes on
            row.status, row.reason = Status.FAILED, str(error)
    if not result["measures_latency"] and row.status is Status.OK:
        row.status, row.reason = Status.LATENCY_NOT_MEASURED, COREML_LATENCY


def measure_again(row: Row, job: WorkerJob, work: Path) -> None:
    """Another fresh process for a measured row; its parity was settled by the first."""
    result, _, _ = run_worker(job, row.threads, work)
    if "status" in result:
        row.status, row.reason = Status.FAILED, f"process {len(row.runs) + 1}: {result['reason']}"
    else:
        row.runs.append(result)


def judge_row(row: Row, reference: Reference, logits: np.ndarray, task_logits: np.ndarray | None,
              runner_dtype: str | None = None) -> None:
    """The row's parity with the reference, by the limits of what it computed in (the runner's forced float16, else
    as exported), and its status when that fails."""
    limits = PRECISIONS[row.precision].limits_for(runner_dtype or row.compute_dtype)
    parity = row_parity(reference, logits, limits, task_logits)
    failures = parity.pop("failures")
    issue = RUNTIMES[row.runtime_row].known_issue(row.precision) if row.runtime_row else None
    if issue:
        parity["known_issue"] = issue
    row.parity = parity
    if failures:
        row.status, row.reason = Status.PARITY_FAILED, with_known_issue("; ".join(failures), parity)


def is_measured(row: Row) -> bool:
    """Whether its processes ran (whatever its parity), so that another process may be added."""
    return bool(row.runs) and row.status in (Status.OK, Status.PARITY_FAILED)


def finish_rows(rows: list[Row], macs: int | None, fma_peak_per_thread: float | None,
                protocol: str = "median") -> list[dict]:
    """Rows as results.json has them: latency over the timed calls of all the row's processes, load and
    first inference as their medians, the largest peak memory, throughput, GFLOP/s, fraction of peak and
    the ours/timm ratio; throughput, GFLOP/s and speed-ups from the --latency `protocol`'s statistic."""
    latencies = {id(row): _pooled_latency(row.runs) for row in rows}
    statistic = LATENCY_STATISTICS[protocol]
    timm_rows = {row.key(): row for row in rows if row.source == "timm"}
    fp32_medians = {_same_but_precision(row): latencies[id(row)][statistic] for row in rows
                    if row.precision == FP32.name and latencies[id(row)]}
    finished = []
    for row in rows:
        latency = latencies[id(row)]
        median_s = latency[statistic] / 1e3 if latency else None
        # A software device's speed makes no arithmetic rate.
        gflops = 2 * macs * row.batch / median_s / 1e9 if median_s and macs and not emulated(row) else None
        peer = timm_rows.get(row.key()) if row.source == "mnv4" else None
        fp32_median = fp32_medians.get(_same_but_precision(row)) if row.precision != FP32.name else None
        finished.append({
            "source": row.source, "format": row.format, "runtime": row.runtime, "device": row.device,
            "precision": row.precision, "threads": row.threads if row.device != "cuda" else None, "batch": row.batch,
            "status": row.status.value, "reason": row.reason, "latency_ms": latency,
            "load_ms": _median_of(row.runs, "load_ms"), "first_inference_ms": _median_of(row.runs, "first_inference_ms"),
            "throughput_ips": row.batch / median_s if median_s else None,
            "peak_rss_mb": max((run["peak_rss_mb"] for run in row.runs), default=None),
            "artifact_bytes": _bytes(row.artifact), "export_seconds": row.export_seconds,
            "parity": row.parity, "gflops": gflops,
            "peak_fraction": gflops / (fma_peak_per_thread * row.threads)
            if gflops and fma_peak_per_thread and row.device == "cpu" else None,
            "ratio_vs_timm": _ratio_vs_timm(row, peer) if peer and latency and latencies[id(peer)] else None,
            "speedup_vs_fp32": fp32_median / latency[statistic] if fp32_median and latency else None,
            "execution": row.runs[0]["execution"] if row.runs else None, "emulated": emulated(row),
        })
    return finished


def _same_but_precision(row: Row) -> tuple:
    """What identifies a row's float32 twin: the same source, format, runtime, device, threads, batch and mode."""
    return row.source, row.format, row.runtime, row.device, row.threads, row.batch, row.mode


def _pooled_latency(runs: list[dict]) -> dict | None:
    times = [time for run in runs for time in run["times_ms"] or ()]
    if not times:
        return None
    return {**summarise(times), "processes": len(runs),
            "median_of_process_means": median_of_process_means([run["times_ms"] for run in runs if run["times_ms"]])}


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
