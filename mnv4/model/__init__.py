from .blocks import (
    InvertedResidual,
    MNV4LayerScale,
    MultiHeadSelfAttentionBlock,
    MultiQueryAttentionLayerWithDownSampling,
    UniversalInvertedBottleneckBlock,
)
from .network import MobileNetV4
from .specs import PAPER_VARIANTS, VARIANTS, VariantSpec, get_spec

__all__ = [
    "InvertedResidual",
    "MNV4LayerScale",
    "MobileNetV4",
    "MultiHeadSelfAttentionBlock",
    "MultiQueryAttentionLayerWithDownSampling",
    "PAPER_VARIANTS",
    "UniversalInvertedBottleneckBlock",
    "VARIANTS",
    "VariantSpec",
    "get_spec",
]
