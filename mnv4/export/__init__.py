"""Export: one module per format (onnx, tflite, executorch, coreml) behind one pipeline that writes the
artifact, verifies it in its own runtime (verify.py) and publishes it with its manifest (pipeline.py).

Its names are imported on first use: `mnv4 verify` with a stored reference needs only verify.py, which imports
no PyTorch, where the pipeline does."""
from __future__ import annotations

import importlib

_NAMES = {
    **dict.fromkeys(("ExportRequest", "VerificationFailed", "check_request", "default_output", "export"), "pipeline"),
    **dict.fromkeys(("reference_model", "verify_artifact", "verify_manifest"), "verify"),
}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


__all__ = sorted(_NAMES)
