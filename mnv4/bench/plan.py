"""What `mnv4 bench` measures: its options, their checks, and the rows they ask for, before anything runs.

Every format here comes from the one table, `mnv4.artifact.formats.FORMATS`, plus PyTorch itself (TORCH)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..artifact.formats import FORMATS as ARTIFACT_FORMATS
from ..artifact.formats import PRECISIONS as ARTIFACT_PRECISIONS
from ..artifact.formats import TORCH
from ..errors import MNV4Error
from ..runtimes import runner_class

FORMATS = (*ARTIFACT_FORMATS, TORCH)
PRECISIONS = (*ARTIFACT_PRECISIONS, "bf16")  # bf16: PyTorch on CUDA only
CPU_TORCH_MODES = ("eager", "channels_last", "compile")
CUDA_TORCH_MODES = ("eager", "channels_last", "compile", "cuda_graphs")
TORCH_RUNTIMES = {"eager": "torch-eager", "channels_last": "torch-channels_last", "compile": "torch-compile",
                  "cuda_graphs": "torch-cuda-graphs"}
CUDA_BATCHES = (1, 8, 64, 256)  # the default CUDA sweep: latency at 1, throughput towards 256


@dataclass(frozen=True)
class BenchOptions:
    variant: str
    formats: tuple[str, ...] = FORMATS
    precisions: tuple[str, ...] = ("fp32", "fp16")
    threads: tuple[int, ...] = (1,)
    batches: tuple[int, ...] | None = None  # default: 1 on CPU, CUDA_BATCHES on CUDA
    device: str = "cpu"
    warmup: int = 10
    repeats: int = 1  # fresh processes per row, interleaved over the rows; latency pools their calls
    iterations: int | None = None
    min_seconds: float | None = 2.0
    weights: str | None = None
    resolution: int | None = None
    compare_timm: bool = False
    command: str | None = None


@dataclass
class Row:
    """One configuration to measure; becomes one row of results.json."""

    source: str
    format: str
    runtime: str
    device: str
    precision: str
    threads: int | None
    batch: int
    mode: str | None = None  # torch rows: eager, channels_last, compile, cuda_graphs
    artifact: Path | None = None
    export_seconds: float | None = None
    tolerance: str = "fp32"
    status: str = "ok"
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
        raise MNV4Error(f"unknown variant {options.variant!r}; choose one of: {', '.join(VARIANTS)}")
    for name, given, allowed in (("format", options.formats, FORMATS), ("precision", options.precisions, PRECISIONS)):
        unknown = [value for value in given if value not in allowed]
        if unknown or not given:
            raise MNV4Error(f"unknown {name} {', '.join(unknown) or '(none)'}; choose from: {', '.join(allowed)}")
    if options.device not in ("cpu", "cuda"):
        raise MNV4Error(f"unknown device {options.device!r}; choose cpu or cuda")
    if options.batches and min(options.batches) < 1:
        raise MNV4Error(f"--batch takes positive integers, got {','.join(map(str, options.batches))}")
    check_timing(options)


def check_timing(options) -> None:
    """The options of how each row is timed (threads, warm-up, repeats, iterations), of either kind of bench."""
    if not options.threads or min(options.threads) < 1:
        raise MNV4Error(f"--threads takes positive integers, got {','.join(map(str, options.threads)) or '(none)'}")
    if options.iterations is not None and options.iterations < 1:
        raise MNV4Error(f"--iterations must be at least 1, got {options.iterations}")
    if options.repeats < 1:
        raise MNV4Error(f"--repeats must be at least 1, got {options.repeats}")
    if options.warmup < 0:
        raise MNV4Error(f"--warmup must be 0 or more, got {options.warmup}")


def plan(options: BenchOptions) -> list[Row]:
    """Every row the options ask for, in report order. On CPU: each artifact format x precision x threads
    x batch, and PyTorch eager / channels_last / compile at fp32 (the reference rows); on CUDA: PyTorch
    eager at every precision and channels_last / compile / CUDA graphs, over the batch sweep. With
    --compare-timm each row gets a timm twin where timm has the same path (fp32)."""
    from .peers import PEER_PRECISIONS

    sources = ("mnv4", "timm") if options.compare_timm else ("mnv4",)
    rows = []
    if options.device == "cuda":
        batches = options.batches or CUDA_BATCHES
        for mode in CUDA_TORCH_MODES:
            for precision in options.precisions if mode == "eager" else [p for p in options.precisions if p != "bf16"]:
                for batch in batches:
                    rows += [Row(source, TORCH, TORCH_RUNTIMES[mode], "cuda", precision, None, batch, mode=mode)
                             for source in sources]
        return rows
    batches = options.batches or (1,)
    for fmt in options.formats:
        if fmt == TORCH:
            precisions = ["fp32"] if "fp32" in options.precisions else []
        else:
            precisions = [p for p in options.precisions if p in ARTIFACT_FORMATS[fmt].precisions]
        for precision in precisions:
            for threads in options.threads:
                for batch in batches:
                    for mode in CPU_TORCH_MODES if fmt == TORCH else (None,):
                        # The runtime this platform's runner is (Core ML: predict or the interpreter).
                        runtime = TORCH_RUNTIMES[mode] if fmt == TORCH else runner_class(
                            Path(f"model{ARTIFACT_FORMATS[fmt].suffix}")).runtime
                        rows += [Row(source, fmt, runtime, "cpu", precision, threads, batch, mode=mode)
                                 for source in sources if source == "mnv4" or precision in PEER_PRECISIONS]
    return rows
