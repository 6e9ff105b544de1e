"""The one table of artifact formats. Every other list of formats — CLI choices and help, the exporters'
option checks, the runner picked for a file, the bench's formats, the report's order and colours, timm's peer
exports — derives from `FORMATS`; a new format is one row here plus its exporter and runner modules."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MNV4Error, UnsupportedOptionError

# int8: post-training static quantization (int8 weights and activations, calibrated on images);
# int8-weights: int8 weights only, activations in float (TFLite's dynamic range, Core ML's weight-only).
PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")
CALIBRATED = ("int8",)  # the precisions whose export needs calibration images
LAYOUTS = ("NCHW", "NHWC")
BATCH_MODES = ("fixed", "dynamic")

# Core ML's load-time choice of hardware (coremltools' ct.ComputeUnit, lower-cased), and the deployment targets
# whose programs are ML programs, each with the Core ML specification version its programs get.
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
DEPLOYMENT_TARGETS = {"iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9, "iOS26": 10,
                      "macOS12": 6, "macOS13": 7, "macOS14": 8, "macOS15": 9, "macOS26": 10}
# The oldest target of a precision's operations: int8-weights' constexpr dequantization (iOS 16), int8's
# activation quantize/dequantize (iOS 17).
PRECISION_TARGETS = {"int8-weights": "iOS16", "int8": "iOS17"}


@dataclass(frozen=True)
class Delegate:
    """A backend that an ExecuTorch program hands its operators to (--delegate)."""

    name: str  # what users type: --delegate vulkan
    label: str  # what messages say
    backend: str  # the id ExecuTorch's runtime registers the backend under
    precisions: tuple[str, ...] = ("fp32", "fp16")
    batch_modes: tuple[str, ...] = ("fixed",)
    coreml_options: bool = False  # takes --compute-units and --minimum-deployment-target
    # A vendor SDK that its lowering needs and no package registry carries: the environment variable that
    # names its folder, and a file the lowering loads from there.
    sdk: tuple[str, str] | None = None

    def check_sdk(self) -> None:
        if self.sdk is None:
            return
        variable, library = self.sdk
        root = os.environ.get(variable)
        if not root:
            raise UnsupportedOptionError(f"--delegate {self.name} needs {self.label}'s SDK, which no package registry "
                                         f"carries: {variable} is not set (point it at the SDK, which has {library})")
        if not (Path(root) / library).is_file():
            raise UnsupportedOptionError(f"--delegate {self.name} needs {self.label}'s SDK: {variable}={root} has no "
                                         f"{library}")


DELEGATES: dict[str, Delegate] = {row.name: row for row in (
    Delegate("xnnpack", "XNNPACK", "XnnpackBackend", precisions=("fp32", "fp16", "int8"), batch_modes=BATCH_MODES),
    Delegate("vulkan", "Vulkan", "VulkanBackend"),
    Delegate("coreml", "Core ML", "CoreMLBackend", coreml_options=True),
    # The HTP (Hexagon NPU) computes in float16 or integers, never float32.
    Delegate("qnn", "QNN", "QnnBackend", precisions=("fp16",), sdk=("QNN_SDK_ROOT", "lib/x86_64-linux-clang/libQnnHtp.so")),
)}


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
    delegates: tuple[str, ...] = ()  # rows of DELEGATES it can hand operators to (--delegate); the first is the default
    coreml_options: bool = False  # takes --compute-units and --minimum-deployment-target

    @property
    def exporter(self) -> str:
        """The module under mnv4.export that writes this format."""
        return self.name

    def delegate_of(self, name: str | None = None) -> Delegate | None:
        """The row of delegate `name`, or of the default one (None for a format without delegates)."""
        return DELEGATES[name or self.delegates[0]] if self.delegates else None

    def check(self, *, precision: str = "fp32", nhwc: bool = False, dynamic_batch: bool = False,
              image_input: bool = False, int8_io: bool = False, delegate: str | None = None,
              compute_units: str | None = None, minimum_deployment_target: str | None = None) -> None:
        """Refuse, in one line, an option this format cannot honour."""
        if delegate is not None and delegate not in self.delegates:
            with_delegates = "; ".join(f"{f.name}: {', '.join(f.delegates)}" for f in FORMATS.values() if f.delegates)
            raise UnsupportedOptionError(f"unknown --delegate {delegate!r} for {self.label}; choose one of: "
                                         f"{', '.join(self.delegates)}" if self.delegates else
                                         f"--delegate is for formats with delegates ({with_delegates}), not {self.name}")
        row = self.delegate_of(delegate)
        if row is not None:
            row.check_sdk()  # first: without the SDK nothing else about a delegate matters
            if precision in self.precisions and precision not in row.precisions:
                raise UnsupportedOptionError(f"{self.label} --delegate {row.name} supports precision "
                                             f"{' or '.join(row.precisions)}, not {precision!r}")
            if dynamic_batch and "dynamic" not in row.batch_modes:
                raise UnsupportedOptionError(f"--dynamic-batch is not available for {self.label} --delegate {row.name}; "
                                             f"export a fixed --batch")
        self._check_coreml_options(precision, row, compute_units, minimum_deployment_target)
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

    def _check_coreml_options(self, precision: str, delegate: Delegate | None, compute_units: str | None,
                              minimum_deployment_target: str | None) -> None:
        """--compute-units and --minimum-deployment-target: for Core ML programs, with values coremltools has,
        and a target new enough for the precision's operations."""
        asked = [option for option, value in (("--compute-units", compute_units),
                                              ("--minimum-deployment-target", minimum_deployment_target)) if value]
        if not asked:
            return
        if not (self.coreml_options or (delegate and delegate.coreml_options)):
            takers = [f.name for f in FORMATS.values() if f.coreml_options] + [
                f"{f.name} --delegate {name}" for f in FORMATS.values() for name in f.delegates
                if DELEGATES[name].coreml_options]
            raise UnsupportedOptionError(f"{' and '.join(asked)} {'is' if len(asked) == 1 else 'are'} for Core ML "
                                         f"programs ({', '.join(takers)}), not {self.name}"
                                         + (f" --delegate {delegate.name}" if delegate else ""))
        if compute_units is not None and compute_units not in COMPUTE_UNITS:
            raise UnsupportedOptionError(f"unknown --compute-units {compute_units!r}; choose one of: "
                                         f"{', '.join(COMPUTE_UNITS)}")
        if minimum_deployment_target is None:
            return
        if minimum_deployment_target not in DEPLOYMENT_TARGETS:
            raise UnsupportedOptionError(f"unknown --minimum-deployment-target {minimum_deployment_target!r}; "
                                         f"choose one of: {', '.join(DEPLOYMENT_TARGETS)}")
        oldest = PRECISION_TARGETS.get(precision)
        if oldest and DEPLOYMENT_TARGETS[minimum_deployment_target] < DEPLOYMENT_TARGETS[oldest]:
            equivalent = [name for name, version in DEPLOYMENT_TARGETS.items()
                          if version == DEPLOYMENT_TARGETS[oldest] and name != oldest]
            raise UnsupportedOptionError(f"{self.label} {precision} needs --minimum-deployment-target {oldest} "
                                         f"({'/'.join(equivalent)}) or later, not {minimum_deployment_target}")


FORMATS: dict[str, Format] = {row.name: row for row in (
    Format("onnx", "ONNX", ".onnx", "onnx", "onnxruntime:OnnxRuntimeRunner", "#1f77b4"),
    Format("tflite", "TFLite", ".tflite", "tflite", "litert:LiteRTRunner", "#ff7f0e", layouts=LAYOUTS,
           precisions=PRECISIONS, int8_io=True),
    # ExecuTorch 1.5.1 int8: once an XNNPACK int8 program with a spatial mean has run a batch of 4 or more,
    # a larger batch gives wrong logits or corrupts the heap (its float32 twin resizes fine).
    Format("executorch", "ExecuTorch", ".pte", "executorch", "executorch:ExecuTorchRunner", "#2ca02c",
           layouts=LAYOUTS, fixed_batch_precisions=("int8",), delegates=tuple(DELEGATES)),
    Format("coreml", "Core ML", ".mlpackage", "coreml", "coreml:CoreMLRunner", "#9467bd", image_input=True,
           precisions=PRECISIONS, coreml_options=True),
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
