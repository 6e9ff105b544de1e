"""One runner per runtime behind `Runner`; `load` picks it from the artifact's file name."""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import MNV4Error
from .base import Runner

# suffix -> (module, class)
RUNNERS = {
    ".onnx": ("onnxruntime", "OnnxRuntimeRunner"),
    ".tflite": ("litert", "LiteRTRunner"),
    ".pte": ("executorch", "ExecuTorchRunner"),
    ".mlpackage": ("coreml", "CoreMLRunner"),
}


def runner_class(path: str | Path) -> type[Runner]:
    suffix = Path(path).suffix
    if suffix not in RUNNERS:
        raise MNV4Error(f"no runtime for {Path(path).name}; known artifacts: {', '.join(RUNNERS)}")
    module, name = RUNNERS[suffix]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def load(path: str | Path, threads: int = 1) -> Runner:
    """The runner for an artifact (.onnx, .tflite, .pte, .mlpackage), ready to call on NCHW float32."""
    if not Path(path).exists():
        raise MNV4Error(f"artifact not found: {path}")
    return runner_class(path)(path, threads=threads)


__all__ = ["RUNNERS", "Runner", "load", "runner_class"]
