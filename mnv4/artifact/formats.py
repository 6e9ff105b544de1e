"""The one table of artifact formats, the runtimes each runs in, and the delegates an ExecuTorch program can hand its
operators to. Every other list of formats (CLI choices and help, the runner picked for a file, the bench's formats,
the report's order and colours, timm's peer exports) derives from `FORMATS`, every list of runtimes (`--runtime`,
`--runtimes`) from `RUNTIMES`; a new format is one row here plus its exporter and runner modules, a new runtime one
row plus its runner. Which options each format takes is the option table's (`options.py`), which precisions each computes are
the precision table's rows (`precisions.py`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MNV4Error, UnsupportedOptionError, unknown_value
from .precisions import ARTIFACT_PRECISIONS, FP16, FP32, INT8

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Delegate:
    """A backend that an ExecuTorch program hands its operators to (--delegate)."""

    name: str  # what users type: --delegate vulkan
    label: str  # what messages say
    backend: str  # the id ExecuTorch's runtime registers the backend under
    precisions: tuple[str, ...] = (FP32.name, FP16.name)
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
    Delegate("xnnpack", "XNNPACK", "XnnpackBackend", precisions=(FP32.name, FP16.name, INT8.name)),
    Delegate("vulkan", "Vulkan", "VulkanBackend"),
    Delegate("coreml", "Core ML", "CoreMLBackend"),
    # The HTP (Hexagon NPU) computes in float16 or integers, never float32.
    Delegate("qnn", "QNN", "QnnBackend", precisions=(FP16.name,), sdk=("QNN_SDK_ROOT", "lib/x86_64-linux-clang/libQnnHtp.so")),
)}


@dataclass(frozen=True)
class KnownIssue:
    """A runtime that computes a precision wrong upstream: said beside its verdict, which stays what parity says."""

    precisions: tuple[str, ...]
    note: str  # what is wrong, and the release it was seen in


@dataclass(frozen=True)
class Runtime:
    """Where an artifact runs: its format's CPU runtime, or one that users ship to (a mobile GPU delegate, a browser).
    On this machine the latter run on software devices (Mesa's lavapipe Vulkan, Chromium's SwiftShader): their
    numerics and operator coverage are the real kernels', their speed is not a device's (`emulated`)."""

    name: str  # what users type: --runtime litert-gpu
    label: str  # what messages say
    runner: str  # "module:Class" under mnv4.runtimes
    options: tuple[tuple[str, object], ...] = ()  # the runner's keywords for this runtime
    device: str = "cpu"  # what computes: cpu or gpu
    emulated: bool = False
    known_issues: tuple[KnownIssue, ...] = ()

    def known_issue(self, precision: str) -> str | None:
        return next((issue.note for issue in self.known_issues if precision in issue.precisions), None)

    def record(self, precision: str) -> dict:
        """What a parity record says of the runtime that ran an artifact of `precision`."""
        issue = self.known_issue(precision)
        return {"runtime": self.name, "device": self.device, "emulated": self.emulated,
                **({"known_issue": issue} if issue else {})}


RUNTIMES: dict[str, Runtime] = {row.name: row for row in (
    Runtime("onnxruntime", "ONNX Runtime", "onnxruntime:OnnxRuntimeRunner"),
    Runtime("ort-web-wasm", "ONNX Runtime Web (WebAssembly, Chromium)", "browser:BrowserRunner",
            (("backend", "wasm"),), emulated=True),
    Runtime("ort-web-webgpu", "ONNX Runtime Web (WebGPU, Chromium)", "browser:BrowserRunner",
            (("backend", "webgpu"),), device="gpu", emulated=True, known_issues=(KnownIssue(
                (INT8.name,), "known upstream issue, seen in onnxruntime-web 1.31.1: its WebGPU backend computes "
                "QuantizeLinear/DequantizeLinear wrong (a two-node Q->DQ graph reproduces it); WASM is right"),)),
    Runtime("ort-web-webgl", "ONNX Runtime Web (WebGL, Chromium)", "browser:BrowserRunner",
            (("backend", "webgl"),), device="gpu", emulated=True),
    Runtime("litert", "LiteRT (XNNPACK)", "litert:LiteRTRunner"),
    # float16 arithmetic, as phones' GPU delegates compute by default
    Runtime("litert-gpu", "LiteRT GPU accelerator", "litert:LiteRTGpuRunner", device="gpu", emulated=True),
    Runtime("litert-gpu-fp32", "LiteRT GPU accelerator (float32)", "litert:LiteRTGpuRunner",
            (("enforce_f32", True),), device="gpu", emulated=True),
    Runtime("litert-js-wasm", "LiteRT.js (WebAssembly, Chromium)", "browser:BrowserRunner",
            (("backend", "wasm"),), emulated=True),
    Runtime("litert-js-webgpu", "LiteRT.js (WebGPU, Chromium)", "browser:BrowserRunner",
            (("backend", "webgpu"),), device="gpu", emulated=True),
    Runtime("executorch", "ExecuTorch", "executorch:ExecuTorchRunner"),
    # Core ML's own predict on macOS, its ML program interpreted elsewhere (runtimes/coreml.py)
    Runtime("coreml", "Core ML", "coreml:CoreMLRunner"),
    # float32 arithmetic asked for: on a CPU with bf16 the plugin would compute float32 IRs in bfloat16
    Runtime("openvino", "OpenVINO (CPU)", "openvino:OpenVinoRunner"),
    Runtime("ncnn", "ncnn", "ncnn:NcnnRunner"),
    # float16 storage and arithmetic, ncnn's default on a Vulkan GPU that has them, as phones run it
    Runtime("ncnn-vulkan", "ncnn Vulkan", "ncnn:NcnnVulkanRunner", device="gpu", emulated=True),
    Runtime("ncnn-vulkan-fp32", "ncnn Vulkan (float32)", "ncnn:NcnnVulkanRunner", (("fp16", False),), device="gpu",
            emulated=True),
)}


@dataclass(frozen=True)
class Format:
    name: str  # what users type: --format onnx
    label: str  # what messages and reports say
    suffix: str  # the artifact's file (or .mlpackage directory) suffix
    extra: str  # pip install 'mnv4[extra]' brings its toolchain and runtime
    runtimes: tuple[str, ...]  # rows of RUNTIMES it runs in; the first, its CPU runtime, verifies every export
    color: str  # the report's colour for its rows
    precisions: tuple[str, ...] = (FP32.name, FP16.name, INT8.name)
    delegates: tuple[str, ...] = ()  # rows of DELEGATES it can hand operators to (--delegate); the first is the default
    # --image-input is an image type of the format's own (Core ML's ImageType, a CVPixelBuffer on device), not NHWC
    # pixels normalised in the graph
    image_type: bool = False
    # Its runtime's input holds one image (ncnn's Mat has no batch axis): fixed batch 1 artifacts only.
    one_image: bool = False
    # Files its exporter writes beside the artifact, as (what the manifest calls one, the suffix that replaces the
    # artifact's): published, recorded (name and sha256) and removed with it.
    companions: tuple[tuple[str, str], ...] = ()

    @property
    def exporter(self) -> str:
        """The module under mnv4.export that writes this format."""
        return self.name

    @property
    def runtime(self) -> Runtime:
        """Its CPU runtime."""
        return RUNTIMES[self.runtimes[0]]

    def runtime_named(self, name: str | None) -> Runtime:
        """The row of runtime `name` (None: the CPU one); one that runs another format is refused in one line."""
        if name is None:
            return self.runtime
        if name not in RUNTIMES:
            raise MNV4Error(unknown_value("runtime", name, RUNTIMES))
        if name not in self.runtimes:
            raise MNV4Error(f"runtime {name} does not run {self.label} artifacts; {self.label} runs in: "
                            f"{', '.join(self.runtimes)}")
        return RUNTIMES[name]

    def delegate_of(self, name: str | None = None) -> Delegate | None:
        """The row of delegate `name`, or of the default one (None for a format without delegates)."""
        return DELEGATES[name or self.delegates[0]] if self.delegates else None

    def precisions_of(self, delegate: Delegate | None) -> tuple[str, ...]:
        """The precisions this format computes, with `delegate` where it has delegates."""
        return tuple(name for name in self.precisions if delegate is None or name in delegate.precisions)


FORMATS: dict[str, Format] = {row.name: row for row in (
    Format("onnx", "ONNX", ".onnx", "onnx", ("onnxruntime", "ort-web-wasm", "ort-web-webgpu", "ort-web-webgl"),
           "#1f77b4"),
    Format("tflite", "TFLite", ".tflite", "tflite",
           ("litert", "litert-gpu", "litert-gpu-fp32", "litert-js-wasm", "litert-js-webgpu"), "#ff7f0e",
           precisions=ARTIFACT_PRECISIONS),
    Format("executorch", "ExecuTorch", ".pte", "executorch", ("executorch",), "#2ca02c", delegates=tuple(DELEGATES)),
    Format("coreml", "Core ML", ".mlpackage", "coreml", ("coreml",), "#9467bd", precisions=ARTIFACT_PRECISIONS,
           image_type=True),
    # ONNX Runtime Mobile's format: the ONNX export converted by onnxruntime's tool, whose constant folding turns fp16
    # weights (Cast to float32) back into float32 ones, so fp16 would be fp32 with rounded weights. Beside it, the
    # operators a minimal onnxruntime build must include, named as the tool names it for one model.
    Format("ort", "ORT", ".ort", "onnx", ("onnxruntime",), "#17becf", precisions=(FP32.name, INT8.name),
           companions=(("required_operators", ".required_operators.config"),)),
    # OpenVINO IR: the .xml graph, whose weights OpenVINO reads from the .bin of the same name beside it.
    Format("openvino", "OpenVINO", ".xml", "openvino", ("openvino",), "#e377c2", companions=(("weights", ".bin"),)),
    # Tencent's ncnn: the graph in the .param, the weights in the .bin beside it (export/ncnn.py). No int8: ncnn's
    # quantization tools are in no wheel.
    Format("ncnn", "ncnn", ".param", "ncnn", ("ncnn", "ncnn-vulkan", "ncnn-vulkan-fp32"), "#bcbd22",
           precisions=(FP32.name, FP16.name), one_image=True, companions=(("weights", ".bin"),)),
)}
# PyTorch itself, measured beside the artifacts by the bench: a reference, not an artifact format.
TORCH = "torch"
TORCH_COLOR = "#8c564b"


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise MNV4Error(unknown_value("format", name, FORMATS))
    return FORMATS[name]


def format_of(path: str | Path) -> Format:
    """The format of an artifact, from its file name."""
    suffix = Path(path).suffix
    for row in FORMATS.values():
        if row.suffix == suffix:
            return row
    raise MNV4Error(f"no runtime for {Path(path).name}; known artifacts: "
                    f"{', '.join(row.suffix for row in FORMATS.values())}")


def runtime_of(path: str | Path, name: str | None = None) -> Runtime:
    """The runtime `name` for the artifact at `path` (default: its format's CPU runtime)."""
    return format_of(path).runtime_named(name)
