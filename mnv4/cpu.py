"""What this CPU is and which instruction-set extensions it has: recorded in bench results, and read by
the int8 exporters, whose best recipe depends on the integer dot-product instructions (VNNI, ARM dotprod)."""
from __future__ import annotations

import platform
import subprocess
import sys
from functools import cache
from pathlib import Path

# The instruction-set extensions that decide which kernels the runtimes pick.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "fphp", "asimdhp",
             "asimddp", "i8mm", "bf16", "sve", "sve2")
# Integer dot-product instructions: x86 VNNI (AVX-512 or AVX) and ARM's dot product.
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp", "dotprod")
# Native float16 arithmetic, which XNNPACK's fp16 kernels then use (elsewhere they emulate it in float32).
FP16_ARITHMETIC_FLAGS = ("avx512_fp16", "asimdhp", "fphp")


@cache
def cpuinfo() -> dict:
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


def int8_dot_product() -> str | None:
    """The integer dot-product extension this CPU has (the first of DOT_PRODUCT_FLAGS), else None."""
    flags = cpuinfo()["flags"]
    return next((flag for flag in DOT_PRODUCT_FLAGS if flag in flags), None)


def summary() -> dict:
    """What reduced-precision results depend on, for the records they go into."""
    flags = cpuinfo()["flags"]
    return {"model": cpuinfo()["cpu_model"], "machine": platform.machine(), "int8_dot_product": int8_dot_product(),
            "fp16_arithmetic": next((flag for flag in FP16_ARITHMETIC_FLAGS if flag in flags), None)}


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")
