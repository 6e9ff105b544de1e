"""Export: one module per format (onnx, tflite, executorch, coreml, ort), each taking the checked `ArtifactOptions` and
returning typed `ArtifactFacts`, behind one pipeline that writes the artifact, verifies it in its own runtime
(mnv4.verification) and publishes it with its manifest (pipeline.py).

Its names are imported on first use, so that importing the package imports no PyTorch."""
from __future__ import annotations

import importlib

_NAMES = {
    **dict.fromkeys(("check_request", "default_output", "export"), "mnv4.export.pipeline"),
    "ExportRequest": "mnv4.artifact.options",
}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)


__all__ = sorted(_NAMES)
