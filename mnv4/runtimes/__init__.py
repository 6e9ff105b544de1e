"""One runner per runtime behind `Runner`; `load` picks it from the artifact's format (artifact.formats)."""
from __future__ import annotations

import importlib
from pathlib import Path

from ..artifact.formats import format_of
from ..errors import MNV4Error
from .base import Runner


def runner_class(path: str | Path) -> type[Runner]:
    module, name = format_of(path).runner.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def load(path: str | Path, threads: int = 1) -> Runner:
    """The runner for an artifact (.onnx, .tflite, .pte, .mlpackage), ready to call on NCHW float32."""
    if not Path(path).exists():
        raise MNV4Error(f"artifact not found: {path}")
    return runner_class(path)(path, threads=threads)


__all__ = ["Runner", "load", "runner_class"]
