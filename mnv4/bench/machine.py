"""What a benchmark ran on: CPU model, cores, ISA, memory, GPU, library versions, and the machine's
measured fp32 FMA throughput per thread (the ceiling each CPU row is compared with)."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

# The instruction-set extensions that decide which kernels the runtimes pick.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "neon", "asimd", "fphp", "asimdhp",
             "asimddp", "i8mm", "bf16", "sve", "sve2")
LIBRARIES = ("mnv4", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "litert-torch", "ai-edge-litert",
             "executorch", "coremltools", "timm")


def _cpuinfo() -> dict:
    """Model name, flags and physical core count from /proc/cpuinfo (Linux); macOS asks sysctl."""
    if sys.platform == "darwin":
        def sysctl(key: str) -> str:
            return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=False).stdout.strip()
        features = [name.removeprefix("hw.optional.arm.").lower() for name in
                    subprocess.run(["sysctl", "hw.optional"], capture_output=True, text=True,
                                   check=False).stdout.split("\n")
                    if name.endswith(": 1")]
        return {"cpu_model": sysctl("machdep.cpu.brand_string"), "physical_cores": int(sysctl("hw.physicalcpu") or 0)
                or None, "flags": {feature.split(":")[0].split(".")[-1] for feature in features} | {"neon"}}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu_model": platform.processor(), "physical_cores": None, "flags": set()}
    model, flags, cores = platform.processor(), set(), set()
    physical_id = core_id = None
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and value:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
            cores.add((physical_id, core_id))
    return {"cpu_model": model, "physical_cores": len(cores) or None, "flags": flags}


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpu() -> str | None:
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
    cpu = _cpuinfo()
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
        "fma_peak_gflops_per_thread": fma_peak_gflops_per_thread() if measure_peak else None,
    }
