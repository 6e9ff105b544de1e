"""One measurement in a fresh process: `python -m mnv4.bench.worker JOB.json RESULT.json`.

A fresh process per measurement keeps runtimes from disturbing each other: each sets up its own thread
pools, and peak resident memory is this measurement's alone. The job names an artifact (run through
`mnv4.runtimes.load`) or a PyTorch model; the worker times it on real photos and saves its logits on the
verification inputs, which the parent compares with the reference."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import MissingExtraError, MNV4Error, PlatformUnsupportedError
from .latency import MIN_ITERATIONS, time_calls

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_model(job: dict):
    """The job's PyTorch model with the benchmark's weights: ours, or timm's built by timm."""
    import torch
    from safetensors.torch import load_file

    if job["source"] == "timm":
        try:
            import timm
        except ImportError:
            raise MissingExtraError("timm (the peer model)", "bench") from None
        model = timm.create_model(f"mobilenetv4_{job['variant']}", pretrained=False, num_classes=job["num_classes"])
        model.load_state_dict(load_file(job["weights"]))
    else:
        from ..model.factory import create_model

        model = create_model(job["variant"], pretrained=job["weights"])
    return model.eval().to(getattr(torch, TORCH_DTYPES[job["precision"]]))


def cpu_runner(job: dict):
    """A Runner for an artifact or for PyTorch on the CPU: a callable from NCHW float32 to logits."""
    if job["runner"] == "artifact":
        from ..runtimes import load

        return load(job["path"], threads=job["threads"])
    from ..runtimes.torch import TorchRunner

    return TorchRunner(torch_model(job), threads=job["threads"], mode=job["mode"])


def cuda_call(job: dict, batch: np.ndarray):
    """A CUDA forward on a device-resident batch (host<->device copies are not part of the latency):
    returns (call, logits_of) where call() runs once and waits for the GPU, and logits_of(array) runs any
    batch of the same size and returns float32 logits on the host."""
    import torch

    if not torch.cuda.is_available():
        raise PlatformUnsupportedError("no CUDA device on this machine")
    device = torch.device("cuda")
    model = torch_model(job).to(device)
    dtype = next(model.parameters()).dtype
    memory_format = torch.channels_last if job["mode"] == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    static_input = torch.from_numpy(batch).to(device, dtype).contiguous(memory_format=memory_format)
    forward = torch.compile(model) if job["mode"] == "compile" else model

    if job["mode"] == "cuda_graphs":
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


def padded_batches(inputs: np.ndarray, batch: int):
    """The inputs in batches of exactly `batch` (the last padded by repeating images), with how many
    of each batch are real."""
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.resize(inputs, (batch - real, *inputs.shape[1:]))])
        yield chunk, real


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
    """The batch that is timed: the real photos (the inputs without the two random ones), repeated to `size`."""
    return np.ascontiguousarray(np.resize(inputs[:-2] if len(inputs) > 2 else inputs, (size, *inputs.shape[1:])),
                                dtype=np.float32)


def compare_pair(jobs: list[dict]) -> dict:
    """The latency ratio of two CPU jobs (ours, then timm's twin) timed call by call in one process, in
    ABBA order: both see the same machine at every moment, so a change of machine speed, which moves
    separate processes' medians by several per cent on a shared VM, cancels out of the ratio."""
    first = jobs[0]
    pin_to_cpus(first["threads"])
    batch = timed_batch(np.load(first["inputs"]), first["batch"])
    runners = [cpu_runner(job) for job in jobs]
    for _ in range(max(first["warmup"], 1)):
        for runner in runners:
            runner(batch)
    times: list[list[float]] = [[], []]
    started = time.perf_counter()
    rounds = 0
    while True:
        for index in (0, 1) if rounds % 2 == 0 else (1, 0):
            start = time.perf_counter()
            runners[index](batch)
            times[index].append(time.perf_counter() - start)
        rounds += 1
        if first["iterations"] is not None:
            if rounds >= first["iterations"]:
                break
        elif rounds >= MIN_ITERATIONS and time.perf_counter() - started >= 2 * (first["min_seconds"] or 0.0):
            break
    return {"ratio": float(np.median(times[0]) / np.median(times[1])), "rounds": rounds}


def measure(job: dict) -> dict:
    if job["device"] == "cpu":
        pin_to_cpus(job["threads"])
    inputs = np.load(job["inputs"])
    batch = timed_batch(inputs, job["batch"])
    started = time.perf_counter()
    if job["device"] == "cuda":
        call, logits_of = cuda_call(job, batch)
        measures_latency, runtime = True, None
    else:
        runner = cpu_runner(job)
        measures_latency = runner.measures_latency
        runtime = runner.runtime if job["runner"] == "artifact" else None

        def call():
            return runner(batch)

        logits_of = runner
    load_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    call()
    first_inference_ms = (time.perf_counter() - started) * 1e3
    times = time_calls(call, job["warmup"], job["iterations"], job["min_seconds"]) if measures_latency else None
    logits = np.concatenate([logits_of(chunk)[:real] for chunk, real in padded_batches(inputs, job["batch"])])
    np.save(job["logits"], logits.astype(np.float32))
    return {"load_ms": load_ms, "first_inference_ms": first_inference_ms, "times_ms": times,
            "peak_rss_mb": round(peak_rss_mb(), 1), "measures_latency": measures_latency,
            "runtime": runtime}  # what actually ran: e.g. Core ML's interpreter off macOS


def main(job_path: str, result_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    try:
        result = compare_pair(job["compare"]) if "compare" in job else measure(job)
    except MissingExtraError as error:
        result = {"status": "unavailable", "reason": f"unavailable: install mnv4[{error.extra}]"}
    except PlatformUnsupportedError as error:
        result = {"status": "unavailable", "reason": f"unavailable: {error}"}
    except MNV4Error as error:
        result = {"status": "failed", "reason": str(error)}
    except Exception as error:  # a runtime's own failure: recorded in the row, the benchmark goes on
        result = {"status": "failed", "reason": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
