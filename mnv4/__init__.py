"""mnv4: MobileNetV4 in PyTorch, identical to timm, with verified exporters.

`import mnv4` imports neither torch nor any toolchain, so that a runtime-only install can use
`mnv4.runtimes`: the model API's names and the subpackages are imported on first use."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_MODEL_API = {
    **dict.fromkeys(("InvertedResidual", "MNV4LayerScale", "MobileNetV4", "MultiHeadSelfAttentionBlock",
                     "MultiQueryAttentionLayerWithDownSampling", "UniversalInvertedBottleneckBlock"), "mnv4.model"),
    **dict.fromkeys(("create_model", "list_variants", "mobilenetv4_hybrid_large", "mobilenetv4_hybrid_medium",
                     "mobilenetv4_large", "mobilenetv4_medium", "mobilenetv4_small"), "mnv4.model.factory"),
    **dict.fromkeys(("profile", "summary"), "mnv4.model.profile"),
}
SUBPACKAGES = ("artifact", "bench", "data", "emulation", "errors", "export", "model", "runtimes", "verification")


def __getattr__(name: str):
    if name in _MODEL_API:
        value = getattr(importlib.import_module(_MODEL_API[name]), name)
    elif name in SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'mnv4' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted([*globals(), *_MODEL_API, *SUBPACKAGES])


__all__ = sorted(_MODEL_API)
