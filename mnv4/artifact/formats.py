"""The one table of artifact formats. Every other list of formats — CLI choices and help, the exporters'
option checks, the runner picked for a file, the bench's formats, the report's order and colours, timm's peer
exports — derives from `FORMATS`; a new format is one row here plus its exporter and runner modules."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MNV4Error, UnsupportedOptionError

# int8: post-training static quantization (int8 weights and activations, calibrated on images);
# int8-weights: int8 weights only, activations in float (TFLite's dynamic range, Core ML's weight-only).
PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")
CALIBRATED = ("int8",)  # the precisions whose export needs calibration images
LAYOUTS = ("NCHW", "NHWC")
BATCH_MODES = ("fixed", "dynamic")


@dataclass(frozen=True)
class Format:
    name: str  # what users type: --format onnx
    label: str  # what messages and reports say
    suffix: str  # the artifact's file (or .mlpackage directory) suffix
    extra: str  # pip install 'mnv4[extra]' brings its toolchain and runtime
    runner: str  # "module:Class" under mnv4.runtimes
    color: str  # the report's colour for its rows
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    layouts: tuple[str, ...] = ("NCHW",)
    batch_modes: tuple[str, ...] = BATCH_MODES
    image_input: bool = False  # an RGB image input with the normalisation inside (--image-input)
    int8_io: bool = False  # an int8 artifact may take and give int8 tensors (--int8-io), for NPUs
    fixed_batch_precisions: tuple[str, ...] = ()  # precisions whose artifacts cannot have a dynamic batch


    @property
    def exporter(self) -> str:
        """The module under mnv4.export that writes this format."""
        return self.name

    def check(self, *, precision: str = "fp32", nhwc: bool = False, dynamic_batch: bool = False,
              image_input: bool = False, int8_io: bool = False) -> None:
        """Refuse, in one line, an option this format cannot honour."""
        if precision not in self.precisions:
            raise UnsupportedOptionError(f"{self.label} export supports precision {', '.join(self.precisions[:-1])} "
                                         f"or {self.precisions[-1]}, not {precision!r}")
        if nhwc and "NHWC" not in self.layouts:
            raise UnsupportedOptionError(
                f"--nhwc is not available for {self.label}: its input stays NCHW (NHWC inputs: "
                f"{', '.join(f.name for f in FORMATS.values() if 'NHWC' in f.layouts)})")
        if dynamic_batch and "dynamic" not in self.batch_modes:
            raise UnsupportedOptionError(f"--dynamic-batch is not available for {self.label}")
        if dynamic_batch and precision in self.fixed_batch_precisions:
            raise UnsupportedOptionError(f"--dynamic-batch is not available for {self.label} {precision} "
                                         f"(its runtime computes wrong results when the batch grows); export a "
                                         f"fixed --batch")
        if image_input and not self.image_input:
            raise UnsupportedOptionError(f"--image-input is only for Core ML (an image input type); {self.name} "
                                         f"takes the normalised tensor")
        if int8_io and not (self.int8_io and precision == "int8"):
            with_io = ", ".join(f.name for f in FORMATS.values() if f.int8_io)
            raise UnsupportedOptionError(f"--int8-io is for --precision int8 of {with_io} (integer input and output "
                                         f"for NPUs), not {self.name} {precision}")


FORMATS: dict[str, Format] = {row.name: row for row in (
    Format("onnx", "ONNX", ".onnx", "onnx", "onnxruntime:OnnxRuntimeRunner", "#1f77b4"),
    Format("tflite", "TFLite", ".tflite", "tflite", "litert:LiteRTRunner", "#ff7f0e", layouts=LAYOUTS,
           precisions=PRECISIONS, int8_io=True),
    # ExecuTorch 1.5.1 int8: once an XNNPACK int8 program with a spatial mean has run a batch of 4 or more,
    # a larger batch gives wrong logits or corrupts the heap (its float32 twin resizes fine).
    Format("executorch", "ExecuTorch", ".pte", "executorch", "executorch:ExecuTorchRunner", "#2ca02c",
           layouts=LAYOUTS, fixed_batch_precisions=("int8",)),
    Format("coreml", "Core ML", ".mlpackage", "coreml", "coreml:CoreMLRunner", "#9467bd", image_input=True,
           precisions=PRECISIONS),
)}
# PyTorch itself, measured beside the artifacts by the bench: a reference, not an artifact format.
TORCH = "torch"
TORCH_COLOR = "#8c564b"


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise MNV4Error(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(path: str | Path) -> Format:
    """The format of an artifact, from its file name."""
    suffix = Path(path).suffix
    for row in FORMATS.values():
        if row.suffix == suffix:
            return row
    raise MNV4Error(f"no runtime for {Path(path).name}; known artifacts: "
                    f"{', '.join(row.suffix for row in FORMATS.values())}")
