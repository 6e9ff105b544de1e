"""The one table of artifact formats, and the delegates an ExecuTorch program can hand its operators to. Every
other list of formats (CLI choices and help, the runner picked for a file, the bench's formats, the report's order
and colours, timm's peer exports) derives from `FORMATS`; a new format is one row here plus its exporter and runner
modules. Which options each format takes is the option table's (`options.py`), which precisions each computes are
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
class Format:
    name: str  # what users type: --format onnx
    label: str  # what messages and reports say
    suffix: str  # the artifact's file (or .mlpackage directory) suffix
    extra: str  # pip install 'mnv4[extra]' brings its toolchain and runtime
    runner: str  # "module:Class" under mnv4.runtimes
    color: str  # the report's colour for its rows
    precisions: tuple[str, ...] = (FP32.name, FP16.name, INT8.name)
    delegates: tuple[str, ...] = ()  # rows of DELEGATES it can hand operators to (--delegate); the first is the default

    @property
    def exporter(self) -> str:
        """The module under mnv4.export that writes this format."""
        return self.name

    def delegate_of(self, name: str | None = None) -> Delegate | None:
        """The row of delegate `name`, or of the default one (None for a format without delegates)."""
        return DELEGATES[name or self.delegates[0]] if self.delegates else None

    def precisions_of(self, delegate: Delegate | None) -> tuple[str, ...]:
        """The precisions this format computes, with `delegate` where it has delegates."""
        return tuple(name for name in self.precisions if delegate is None or name in delegate.precisions)


FORMATS: dict[str, Format] = {row.name: row for row in (
    Format("onnx", "ONNX", ".onnx", "onnx", "onnxruntime:OnnxRuntimeRunner", "#1f77b4"),
    Format("tflite", "TFLite", ".tflite", "tflite", "litert:LiteRTRunner", "#ff7f0e", precisions=ARTIFACT_PRECISIONS),
    Format("executorch", "ExecuTorch", ".pte", "executorch", "executorch:ExecuTorchRunner", "#2ca02c",
           delegates=tuple(DELEGATES)),
    Format("coreml", "Core ML", ".mlpackage", "coreml", "coreml:CoreMLRunner", "#9467bd", precisions=ARTIFACT_PRECISIONS),
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
