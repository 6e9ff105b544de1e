"""mnv4: MobileNetV4 in PyTorch, identical to timm, with verified exporters."""
from .model import (
    InvertedResidual,
    MNV4LayerScale,
    MobileNetV4,
    MultiHeadSelfAttentionBlock,
    MultiQueryAttentionLayerWithDownSampling,
    UniversalInvertedBottleneckBlock,
)
from .model.factory import (
    create_model,
    list_variants,
    mobilenetv4_hybrid_large,
    mobilenetv4_hybrid_medium,
    mobilenetv4_large,
    mobilenetv4_medium,
    mobilenetv4_small,
)
from .model.profile import profile, summary

__version__ = "0.1.0"

__all__ = [
    "InvertedResidual",
    "MNV4LayerScale",
    "MobileNetV4",
    "MultiHeadSelfAttentionBlock",
    "MultiQueryAttentionLayerWithDownSampling",
    "UniversalInvertedBottleneckBlock",
    "create_model",
    "list_variants",
    "mobilenetv4_hybrid_large",
    "mobilenetv4_hybrid_medium",
    "mobilenetv4_large",
    "mobilenetv4_medium",
    "mobilenetv4_small",
    "profile",
    "summary",
]
