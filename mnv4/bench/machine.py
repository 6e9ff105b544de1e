"""What a benchmark ran on: CPU model, cores, ISA, memory, GPU, library versions, and the machine's
measured fp32 FMA throughput per thread (the ceiling each CPU row is compared with)."""
from __future__ import annotations

import os
import platform
import socket
import time
from importlib import metadata

from ..cpu import ISA_FLAGS, cpuinfo
from ..extras import torch_installed

LIBRARIES = ("mnv4", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "litert-torch", "ai-edge-litert",
             "executorch", "coremltools", "openvino", "nncf", "pnnx", "ncnn", "timm")


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpu() -> str | None:
    if not torch_installed():  # a runtime-only install (mnv4[runtime]) benches CPU artifacts
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> dict:
    found = {}
    for library in LIBRARIES:
        try:
            found[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            found[library] = None
    return found


def fma_peak_gflops_per_thread(seconds: float = 1.0) -> float:
    """Single-thread fp32 throughput of a large matrix product (BLAS reaches ~90 % of the FMA units'
    peak on it): the best of repeated 512x512x512 products, in GFLOP/s (2 FLOPs per FMA)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        size = 512
        a, b = torch.randn(size, size), torch.randn(size, size)
        best = float("inf")
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        return round(2 * size**3 / best / 1e9, 2)
    finally:
        torch.set_num_threads(previous)


def machine_info(measure_peak: bool = True) -> dict:
    cpu = cpuinfo()
    gpu = _gpu()
    return {
        "id": f"{socket.gethostname()}-{platform.system().lower()}-{platform.machine()}",
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu["cpu_model"],
        "physical_cores": cpu["physical_cores"],
        "logical_cores": os.cpu_count(),
        "isa": [flag for flag in ISA_FLAGS if flag in cpu["flags"]],
        "memory_gb": _memory_gb(),
        "gpu": gpu,
        "fma_peak_gflops_per_thread": fma_peak_gflops_per_thread() if measure_peak and torch_installed() else None,
    }
