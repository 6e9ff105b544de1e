"""One measurement in a fresh process: `python -m mnv4.bench.worker JOB.json RESULT.json`.

A fresh process per measurement keeps runtimes from disturbing each other: each sets up its own thread
pools, and peak resident memory is this measurement's alone. The job names an artifact (run through
`mnv4.runtimes.load`) or a PyTorch model; the worker times it on real photos and saves its logits on the
verification inputs, which the parent compares with the reference."""
from __future__ import annotations

import itertools
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..artifact.parity import RANDOM_INPUTS
from ..artifact.precisions import PRECISIONS
from ..errors import MissingExtraError, MNV4Error, PlatformUnsupportedError, one_line
from ..runtimes.base import run_in_artifact_batches
from .latency import time_calls
from .results import Status, unavailable_reason


@dataclass(frozen=True)
class Timing:
    """How each row is timed, in either kind of bench."""

    warmup: int = 10
    iterations: int | None = None  # None: time for min_seconds
    min_seconds: float | None = 2.0


@dataclass
class WorkerJob:
    """One measurement, as the parent hands it to a fresh worker process (as JSON)."""

    inputs: str  # .npy of the verification inputs, NCHW float32
    timing: Timing
    threads: int = 1
    batch: int = 1
    device: str = "cpu"
    path: str | None = None  # the artifact; None: a PyTorch model (the fields below)
    runtime: str | None = None  # the artifact's runtime (a row of RUNTIMES; None: its format's CPU runtime)
    runner_options: dict = field(default_factory=dict)  # the artifact runner's keywords (xnnpack_fp16)
    source: str = "mnv4"  # or "timm": whose PyTorch model
    variant: str | None = None
    weights: str | None = None  # .safetensors of the model's weights
    num_classes: int | None = None
    mode: str | None = None  # PyTorch: eager, channels_last, compile, cuda_graphs
    precision: str | None = None  # PyTorch: the precision whose dtype the model runs in
    task_inputs: str | None = None  # .npy of the trained fixture's held-out images, where the model has them
    logits: str = ""  # where the worker saves its logits (set by the parent for each process)
    task_logits: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> WorkerJob:
        return cls(**{**fields, "timing": Timing(**fields["timing"])})


def torch_model(job: WorkerJob):
    """The job's PyTorch model with the benchmark's weights: ours, or timm's built by timm."""
    import torch
    from safetensors.torch import load_file

    if job.source == "timm":
        from .peers import timm_model

        model = timm_model(job.variant, load_file(job.weights), job.num_classes)
    else:
        from ..model.factory import create_model

        model = create_model(job.variant, pretrained=job.weights)
    return model.eval().to(getattr(torch, PRECISIONS[job.precision].torch_dtype))


def cpu_runner(job: WorkerJob):
    """A Runner for an artifact or for PyTorch on the CPU: a callable from NCHW float32 to logits."""
    if job.path is not None:
        from ..runtimes import load

        return load(job.path, threads=job.threads, runtime=job.runtime, **job.runner_options)
    from ..runtimes.torch import TorchRunner

    return TorchRunner(torch_model(job), threads=job.threads, mode=job.mode)


def cuda_call(job: WorkerJob, batch: np.ndarray):
    """A CUDA forward on a device-resident batch (host<->device copies are not part of the latency):
    returns (call, logits_of) where call() runs once and waits for the GPU, and logits_of(array) runs any
    batch of the same size and returns float32 logits on the host."""
    import torch

    if not torch.cuda.is_available():
        raise PlatformUnsupportedError("no CUDA device on this machine")
    device = torch.device("cuda")
    model = torch_model(job).to(device)
    dtype = next(model.parameters()).dtype
    memory_format = torch.channels_last if job.mode == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    static_input = torch.from_numpy(batch).to(device, dtype).contiguous(memory_format=memory_format)
    forward = torch.compile(model) if job.mode == "compile" else model

    if job.mode == "cuda_graphs":
        # One captured graph replays every kernel of the forward with a single launch; inputs are
        # copied into the captured input buffer.
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(static_input)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = model(static_input)

        def run(x):
            static_input.copy_(x)
            graph.replay()
            return static_output
    else:
        def run(x):
            with torch.inference_mode():
                return forward(x)

    def call():
        run(static_input)
        torch.cuda.synchronize()

    def logits_of(array: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(array).to(device, dtype).contiguous(memory_format=memory_format)
        return run(x).float().cpu().numpy()

    return call, logits_of


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux VmHWM, which starts afresh with the worker's own
    address space: getrusage's ru_maxrss is inherited across fork and exec, so there it would report the
    parent's size whenever that was larger. Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10


def pin_to_cpus(threads: int) -> None:
    """Keep the measurement on `threads` fixed CPUs (the last ones, away from CPU 0's interrupt work), so
    that the scheduler does not move it between cores mid-run. Linux only; elsewhere the OS decides."""
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[-threads:])


def timed_batch(inputs: np.ndarray, size: int) -> np.ndarray:
    """The batch that is timed: the real photos (the verification inputs without the random ones), repeated
    to `size`."""
    return np.ascontiguousarray(np.resize(inputs[:-RANDOM_INPUTS], (size, *inputs.shape[1:])), dtype=np.float32)


def compare_pair(jobs: list[WorkerJob]) -> dict:
    """The latency ratio first/second of two CPU jobs, loaded in that order and timed call by call in one
    process, in ABBA order: both see the same machine at every moment, so a change of machine speed, which
    moves separate processes' medians by several per cent on a shared VM, cancels out of the ratio."""
    first = jobs[0]
    pin_to_cpus(first.threads)
    batch = timed_batch(np.load(first.inputs), first.batch)
    runners = [cpu_runner(job) for job in jobs]
    times: list[list[float]] = [[], []]
    orders = itertools.cycle(((0, 1), (1, 0)))

    def round_of_both():
        for index in next(orders):
            start = time.perf_counter()
            runners[index](batch)
            times[index].append(time.perf_counter() - start)

    timing = first.timing
    for _ in range(max(timing.warmup, 1)):
        for runner in runners:
            runner(batch)
    rounds = len(time_calls(round_of_both, 0, timing.iterations, 2 * timing.min_seconds if timing.min_seconds else None))
    return {"ratio": float(np.median(times[0]) / np.median(times[1])), "rounds": rounds}


def measure(job: WorkerJob) -> dict:
    if job.device != "cuda":  # the host's threads, where the CPU computes or drives a runtime's GPU
        pin_to_cpus(job.threads)
    inputs = np.load(job.inputs)
    batch = timed_batch(inputs, job.batch)
    started = time.perf_counter()
    runner = None
    if job.device == "cuda":
        call, logits_of = cuda_call(job, batch)
        measures_latency, compute_dtype, execution = True, None, {"device": "cuda"}
    else:
        runner = cpu_runner(job)
        measures_latency = runner.measures_latency
        compute_dtype = getattr(runner, "compute_dtype", None)  # where the runner chose it (XNNPACK's forced float16)
        execution = runner.execution()  # which delegate or execution providers really ran it

        def call():
            return runner(batch)

        logits_of = runner
    load_ms = (time.perf_counter() - started) * 1e3
    try:
        started = time.perf_counter()
        call()
        first_inference_ms = (time.perf_counter() - started) * 1e3
        timing = job.timing
        times = time_calls(call, timing.warmup, timing.iterations, timing.min_seconds) if measures_latency else None
        # Parity at the row's own batch size (a CUDA graph takes no other).
        np.save(job.logits, run_in_artifact_batches(inputs, "NCHW", np.float32, job.batch, logits_of))
        if job.task_inputs:  # the trained fixture's held-out digits
            np.save(job.task_logits, run_in_artifact_batches(np.load(job.task_inputs), "NCHW", np.float32, job.batch,
                                                             logits_of))
    finally:
        if runner is not None:
            runner.close()  # a browser runner's Chromium and server
    return {"load_ms": load_ms, "first_inference_ms": first_inference_ms, "times_ms": times,
            "peak_rss_mb": round(peak_rss_mb(), 1), "measures_latency": measures_latency, "compute_dtype": compute_dtype,
            "execution": execution}


def main(job_path: str, result_path: str) -> None:
    document = json.loads(Path(job_path).read_text())
    try:
        if "compare" in document:
            result = compare_pair([WorkerJob.from_dict(job) for job in document["compare"]])
        else:
            result = measure(WorkerJob.from_dict(document))
    except MissingExtraError as error:
        result = {"status": Status.UNAVAILABLE, "reason": unavailable_reason(error)}
    except PlatformUnsupportedError as error:
        result = {"status": Status.UNAVAILABLE, "reason": f"unavailable: {error}"}
    except MNV4Error as error:
        result = {"status": Status.FAILED, "reason": str(error)}
    except Exception as error:  # noqa: BLE001 (a runtime's own failure: recorded in the row, the benchmark goes on)
        result = {"status": Status.FAILED, "reason": one_line(error)}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
