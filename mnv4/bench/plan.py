"""What `mnv4 bench` measures: its options, their checks, and the rows they ask for, before anything runs.

Every format here comes from the one table, `mnv4.artifact.formats.FORMATS`, plus PyTorch itself (TORCH)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..artifact.formats import FORMATS as ARTIFACT_FORMATS
from ..artifact.formats import RUNTIMES, TORCH
from ..artifact.options import MAX_BATCH, MAX_THREADS
from ..artifact.precisions import BF16, FP16, FP32, PRECISIONS
from ..errors import MNV4Error, unknown_value
from ..runtimes import recorded_runtime
from .results import LATENCY_STATISTICS, Status
from .worker import Timing

FORMATS = (*ARTIFACT_FORMATS, TORCH)
CPU_TORCH_MODES = ("eager", "channels_last", "compile")
CUDA_TORCH_MODES = ("eager", "channels_last", "compile", "cuda_graphs")
TORCH_RUNTIMES = {"eager": "torch-eager", "channels_last": "torch-channels_last", "compile": "torch-compile",
                  "cuda_graphs": "torch-cuda-graphs"}
CUDA_BATCHES = (1, 8, 64, 256)  # the default CUDA sweep: latency at 1, throughput towards 256
# What --runtimes calls each format's CPU runtime (its first), the default: onnxruntime, litert, executorch, coreml.
CPU_RUNTIMES = "cpu"
# PyTorch on the CPU is measured in float32, the reference; bfloat16 on CUDA in eager mode alone.
CPU_TORCH_PRECISIONS = (FP32.name,)
EAGER_ONLY_PRECISIONS = (BF16.name,)


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """How each row is measured, in either kind of bench: at which thread counts, in how many fresh processes
    (interleaved over the rows; latency pools their calls), timed how."""

    threads: tuple[int, ...] = (1,)
    repeats: int = 1
    timing: Timing = Timing()
    latency: str = "median"  # a key of LATENCY_STATISTICS

    def record(self) -> dict:
        """The options as results.json has them."""
        timing = self.timing
        return {"threads": list(self.threads), "repeats": self.repeats, "latency": self.latency, "warmup": timing.warmup,
                "iterations": timing.iterations, "min_seconds": None if timing.iterations else timing.min_seconds}


@dataclass(frozen=True, kw_only=True)
class BenchOptions(Measurement):
    variant: str
    formats: tuple[str, ...] = FORMATS
    runtimes: tuple[str, ...] = (CPU_RUNTIMES,)  # rows of RUNTIMES, or CPU_RUNTIMES
    precisions: tuple[str, ...] = (FP32.name, FP16.name)
    batches: tuple[int, ...] | None = None  # default: 1 on CPU, CUDA_BATCHES on CUDA
    device: str = "cpu"
    weights: str | None = None
    resolution: int | None = None
    compare_timm: bool = False
    command: str | None = None

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.batches or (CUDA_BATCHES if self.device == "cuda" else (1,))

    def record(self) -> dict:
        fields = {key: value for key, value in asdict(self).items() if key not in ("timing", "batches", "threads")}
        return {**fields, **super().record(), "formats": list(self.formats), "runtimes": list(self.runtimes),
                "precisions": list(self.precisions),
                "batches": list(self.batch_sizes)}


@dataclass
class Row:
    """One configuration to measure; becomes one row of results.json."""

    source: str
    format: str
    runtime: str
    device: str  # what computes: cpu, gpu (a runtime's GPU path) or cuda (PyTorch)
    precision: str
    threads: int | None
    batch: int
    mode: str | None = None  # torch rows: eager, channels_last, compile, cuda_graphs
    runtime_row: str | None = None  # artifact rows: the row of RUNTIMES that runs it
    artifact: Path | None = None
    export_seconds: float | None = None
    compute_dtype: str | None = None  # what it computes in, as exported (PyTorch rows: its dtype); sets its limits
    status: Status = Status.OK
    reason: str | None = None
    runs: list = field(default_factory=list)  # one worker result per process
    interleaved_ratio: float | None = None  # ours/timm timed call by call in one process (CPU twins)
    parity: dict | None = None

    def key(self) -> tuple:
        return self.format, self.runtime, self.device, self.precision, self.threads, self.batch


def check_options(options: BenchOptions) -> None:
    """Bad options are one-line errors before anything runs."""
    from ..model.specs import VARIANTS

    if options.variant not in VARIANTS:
        raise MNV4Error(unknown_value("variant", options.variant, VARIANTS))
    for name, given, allowed in (("format", options.formats, FORMATS), ("precision", options.precisions, PRECISIONS)):
        if not given:
            raise MNV4Error(f"--{name}s names none; choose from: {', '.join(allowed)}")
        for value in given:
            if value not in allowed:
                raise MNV4Error(unknown_value(name, value, allowed))
    check_runtimes(options.runtimes, options.formats)
    if options.device not in ("cpu", "cuda"):
        raise MNV4Error(unknown_value("device", options.device, ("cpu", "cuda")))
    _check_counts("--batch", options.batches or (1,), MAX_BATCH)
    check_measurement(options)


def check_runtimes(runtimes: tuple[str, ...], formats: tuple[str, ...] | None = None) -> None:
    """Each runtime known (or CPU_RUNTIMES), and where `formats` are given, of one of them."""
    if not runtimes:
        raise MNV4Error(f"--runtimes names none; choose from: {', '.join([CPU_RUNTIMES, *RUNTIMES])}")
    for name in runtimes:
        if name != CPU_RUNTIMES and name not in RUNTIMES:
            raise MNV4Error(unknown_value("runtime", name, [CPU_RUNTIMES, *RUNTIMES]))
        owners = [row for row in ARTIFACT_FORMATS.values() if name in row.runtimes]  # onnxruntime runs ONNX and ORT
        if formats is not None and owners and not any(owner.name in formats for owner in owners):
            raise MNV4Error(f"runtime {name} runs {' and '.join(owner.label for owner in owners)} artifacts: add "
                            f"{' or '.join(owner.name for owner in owners)} to --formats")


def runtimes_of(fmt: str, runtimes: tuple[str, ...]) -> list[str]:
    """The runtimes of format `fmt` that --runtimes names, in the format's order."""
    return [name for index, name in enumerate(ARTIFACT_FORMATS[fmt].runtimes)
            if name in runtimes or (index == 0 and CPU_RUNTIMES in runtimes)]


def check_measurement(options: Measurement) -> None:
    """The options of how each row is measured (threads, repeats, warm-up, iterations, seconds), of either bench."""
    _check_counts("--threads", options.threads, MAX_THREADS)
    timing = options.timing
    if timing.iterations is not None and timing.iterations < 1:
        raise MNV4Error(f"--iterations must be at least 1, got {timing.iterations}")
    if options.repeats < 1:
        raise MNV4Error(f"--repeats must be at least 1, got {options.repeats}")
    if options.latency not in LATENCY_STATISTICS:
        raise MNV4Error(f"--latency takes {' or '.join(LATENCY_STATISTICS)}, got {options.latency!r}")
    if timing.warmup < 0:
        raise MNV4Error(f"--warmup must be 0 or more, got {timing.warmup}")
    if timing.min_seconds is not None and not (math.isfinite(timing.min_seconds) and timing.min_seconds > 0):
        raise MNV4Error(f"--min-seconds must be a positive number of seconds, got {timing.min_seconds}")


def _check_counts(flag: str, counts: tuple[int, ...], largest: int) -> None:
    """Each count from 1 to `largest`, and given once."""
    if not counts or not all(1 <= count <= largest for count in counts):
        raise MNV4Error(f"{flag} takes integers from 1 to {largest}, got {','.join(map(str, counts)) or '(none)'}")
    if len(set(counts)) != len(counts):
        raise MNV4Error(f"{flag} names a value twice: {','.join(map(str, counts))}")


def plan(options: BenchOptions) -> list[Row]:
    """Every row the options ask for, in report order. On CPU: each artifact format x precision x threads
    x batch, and PyTorch eager / channels_last / compile at fp32 (the reference rows); on CUDA: PyTorch
    eager at every precision and channels_last / compile / CUDA graphs, over the batch sweep. With
    --compare-timm each row gets a timm twin where timm has the same path (fp32)."""
    sources = ("mnv4", "timm") if options.compare_timm else ("mnv4",)
    rows = []
    if options.device == "cuda":
        for mode in CUDA_TORCH_MODES:
            for precision in [p for p in options.precisions if mode == "eager" or p not in EAGER_ONLY_PRECISIONS]:
                for batch in options.batch_sizes:
                    rows += [Row(source, TORCH, TORCH_RUNTIMES[mode], "cuda", precision, None, batch, mode=mode)
                             for source in sources]
        return rows
    for fmt in options.formats:
        supported = CPU_TORCH_PRECISIONS if fmt == TORCH else ARTIFACT_FORMATS[fmt].precisions
        for precision in [p for p in options.precisions if p in supported]:
            for threads in options.threads:
                for batch in options.batch_sizes:
                    rows += [Row(source, fmt, runtime, RUNTIMES[name].device if name else "cpu", precision, threads,
                                 batch, mode=mode, runtime_row=name)
                             for mode, name, runtime in _runners(fmt, options.runtimes)
                             for source in sources if source == "mnv4" or PRECISIONS[precision].peer]
    return rows


def _runners(fmt: str, runtimes: tuple[str, ...]) -> list[tuple[str | None, str | None, str]]:
    """(PyTorch mode, row of RUNTIMES, the runtime a row names) of each way a format is run: PyTorch's modes, or
    the format's runtimes that --runtimes names (a CPU one named by this platform's runner: Core ML's predict or its
    interpreter)."""
    if fmt == TORCH:
        return [(mode, None, TORCH_RUNTIMES[mode]) for mode in CPU_TORCH_MODES]
    suffix = Path(f"model{ARTIFACT_FORMATS[fmt].suffix}")
    return [(None, name, recorded_runtime(suffix, name)) for name in runtimes_of(fmt, runtimes)]
