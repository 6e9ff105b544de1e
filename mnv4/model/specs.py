"""Every MobileNetV4 variant as a typed table of blocks, stage by stage.

The tables mirror the official TensorFlow block specs (tensorflow/models, official/vision/modeling/
backbones/mobilenet.py: MNV4ConvSmall_BLOCK_SPECS and friends), which timm's `_gen_mobilenet_v4` encodes
as strings. The stem and the 1x1 -> 1280 head conv are fixed parts of the network; the 1x1 -> 960 conv
that TensorFlow lists before global pooling is the last stage here, as in timm (it has its own key,
`blocks.<last>.0`, in timm's checkpoints). Within a stage only the first block may stride. A run of
identical blocks is written once with its count, `*repeat(block, n)`, as timm's `_r<n>` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..data import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing


@dataclass(frozen=True)
class ConvBN:
    """k x k conv -> BatchNorm -> activation."""

    kernel: int
    stride: int
    out: int


@dataclass(frozen=True)
class FusedIB:
    """Fused inverted bottleneck: k x k conv expanding by `expand` -> 1x1 projection."""

    kernel: int
    stride: int
    out: int
    expand: float


@dataclass(frozen=True)
class UIB:
    """Universal inverted bottleneck. A kernel of 0 means that depthwise conv is absent:
    (0, k) inverted bottleneck, (a, 0) ConvNeXt-like, (0, 0) FFN, (a, k) ExtraDW."""

    start: int
    mid: int
    stride: int
    out: int
    expand: float


@dataclass(frozen=True)
class MQA:
    """Mobile multi-query attention: `heads` query heads sharing one key and one value head,
    keys and values downsampled by a stride-`kv_stride` 3x3 depthwise conv when kv_stride > 1."""

    heads: int
    key_dim: int
    kv_stride: int
    out: int
    stride: int = 1


Block = ConvBN | FusedIB | UIB | MQA


def repeat(block: Block, count: int) -> tuple[Block, ...]:
    """`count` copies of one row of a stage table, to be unpacked into the stage."""
    if count < 2:
        raise ValueError(f"a repeated row needs a count of at least 2, got {count} for {block!r}")
    return (block,) * count


@dataclass(frozen=True)
class VariantSpec:
    name: str
    stem: int
    stages: tuple[tuple[Block, ...], ...]
    preprocessing: Preprocessing
    activation: str = "relu"
    # Hybrid models scale each UIB and attention output by a learnable per-channel vector.
    layer_scale: float | None = None
    # Channel multiplier applied to every block's output (timm's round_channels); the stem stays fixed.
    width: float = 1.0
    # Anti-aliased downsampling (timm's aa variants): "avg" 2x2 average pool or "blurpc" binomial blur.
    anti_alias: str | None = None
    head_hidden: int = 1280
    pretrained_tags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for index, stage in enumerate(self.stages):
            for position, block in enumerate(stage[1:], start=1):
                if block.stride > 1:
                    raise ValueError(f"{self.name}: stage {index} block {position} strides ({block!r}); "
                                     "within a stage only the first block may stride")


def _default(resolution: int, crop_pct: float, inception: bool = False) -> Preprocessing:
    if inception:
        return Preprocessing(resolution, crop_pct, "bicubic", INCEPTION_MEAN, INCEPTION_STD)
    return Preprocessing(resolution, crop_pct, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


HEAD_CONV = ConvBN(kernel=1, stride=1, out=960)

CONV_SMALL = VariantSpec(
    name="conv_small",
    stem=32,
    stages=(
        (ConvBN(kernel=3, stride=2, out=32), ConvBN(kernel=1, stride=1, out=32)),
        (ConvBN(kernel=3, stride=2, out=96), ConvBN(kernel=1, stride=1, out=64)),
        (
            UIB(start=5, mid=5, stride=2, out=96, expand=3.0),  # ExtraDW
            *repeat(UIB(start=0, mid=3, stride=1, out=96, expand=2.0), 4),  # IB
            UIB(start=3, mid=0, stride=1, out=96, expand=4.0),  # ConvNeXt
        ),
        (
            UIB(start=3, mid=3, stride=2, out=128, expand=6.0),  # ExtraDW
            UIB(start=5, mid=5, stride=1, out=128, expand=4.0),  # ExtraDW
            UIB(start=0, mid=5, stride=1, out=128, expand=4.0),  # IB
            UIB(start=0, mid=5, stride=1, out=128, expand=3.0),  # IB
            *repeat(UIB(start=0, mid=3, stride=1, out=128, expand=4.0), 2),  # IB
        ),
        (HEAD_CONV,),
    ),
    preprocessing=_default(224, 0.875),
    pretrained_tags=("e2400_r224_in1k", "e1200_r224_in1k", "e3600_r256_in1k"),
)

CONV_MEDIUM = VariantSpec(
    name="conv_medium",
    stem=32,
    stages=(
        (FusedIB(kernel=3, stride=2, out=48, expand=4.0),),
        (
            UIB(start=3, mid=5, stride=2, out=80, expand=4.0),  # ExtraDW
            UIB(start=3, mid=3, stride=1, out=80, expand=2.0),  # ExtraDW
        ),
        (
            UIB(start=3, mid=5, stride=2, out=160, expand=6.0),  # ExtraDW
            *repeat(UIB(start=3, mid=3, stride=1, out=160, expand=4.0), 2),  # ExtraDW
            UIB(start=3, mid=5, stride=1, out=160, expand=4.0),  # ExtraDW
            UIB(start=3, mid=3, stride=1, out=160, expand=4.0),  # ExtraDW
            UIB(start=3, mid=0, stride=1, out=160, expand=4.0),  # ConvNeXt
            UIB(start=0, mid=0, stride=1, out=160, expand=2.0),  # FFN
            UIB(start=3, mid=0, stride=1, out=160, expand=4.0),  # ConvNeXt
        ),
        (
            UIB(start=5, mid=5, stride=2, out=256, expand=6.0),  # ExtraDW
            UIB(start=5, mid=5, stride=1, out=256, expand=4.0),  # ExtraDW
            *repeat(UIB(start=3, mid=5, stride=1, out=256, expand=4.0), 2),  # ExtraDW
            UIB(start=0, mid=0, stride=1, out=256, expand=4.0),  # FFN
            UIB(start=3, mid=0, stride=1, out=256, expand=4.0),  # ConvNeXt
            UIB(start=3, mid=5, stride=1, out=256, expand=2.0),  # ExtraDW
            UIB(start=5, mid=5, stride=1, out=256, expand=4.0),  # ExtraDW
            *repeat(UIB(start=0, mid=0, stride=1, out=256, expand=4.0), 2),  # FFN
            UIB(start=5, mid=0, stride=1, out=256, expand=2.0),  # ConvNeXt
        ),
        (HEAD_CONV,),
    ),
    preprocessing=_default(256, 0.95),
    pretrained_tags=("e500_r256_in1k", "e500_r224_in1k", "e250_r384_in12k_ft_in1k"),
)

CONV_LARGE = VariantSpec(
    name="conv_large",
    stem=24,
    stages=(
        (FusedIB(kernel=3, stride=2, out=48, expand=4.0),),
        (
            UIB(start=3, mid=5, stride=2, out=96, expand=4.0),  # ExtraDW
            UIB(start=3, mid=3, stride=1, out=96, expand=4.0),  # ExtraDW
        ),
        (
            UIB(start=3, mid=5, stride=2, out=192, expand=4.0),  # ExtraDW
            *repeat(UIB(start=3, mid=3, stride=1, out=192, expand=4.0), 3),  # ExtraDW
            UIB(start=3, mid=5, stride=1, out=192, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=3, stride=1, out=192, expand=4.0), 5),  # ExtraDW
            UIB(start=3, mid=0, stride=1, out=192, expand=4.0),  # ConvNeXt
        ),
        (
            UIB(start=5, mid=5, stride=2, out=512, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=5, stride=1, out=512, expand=4.0), 3),  # ExtraDW
            UIB(start=5, mid=0, stride=1, out=512, expand=4.0),  # ConvNeXt
            UIB(start=5, mid=3, stride=1, out=512, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=0, stride=1, out=512, expand=4.0), 2),  # ConvNeXt
            UIB(start=5, mid=3, stride=1, out=512, expand=4.0),  # ExtraDW
            UIB(start=5, mid=5, stride=1, out=512, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=0, stride=1, out=512, expand=4.0), 3),  # ConvNeXt
        ),
        (HEAD_CONV,),
    ),
    preprocessing=_default(384, 0.95),
    pretrained_tags=("e600_r384_in1k", "e500_r256_in1k"),
)

HYBRID_MEDIUM = VariantSpec(
    name="hybrid_medium",
    stem=32,
    stages=(
        (FusedIB(kernel=3, stride=2, out=48, expand=4.0),),
        (
            UIB(start=3, mid=5, stride=2, out=80, expand=4.0),  # ExtraDW
            UIB(start=3, mid=3, stride=1, out=80, expand=2.0),  # ExtraDW
        ),
        (
            UIB(start=3, mid=5, stride=2, out=160, expand=6.0),  # ExtraDW
            UIB(start=0, mid=0, stride=1, out=160, expand=2.0),  # FFN
            UIB(start=3, mid=3, stride=1, out=160, expand=4.0),  # ExtraDW
            UIB(start=3, mid=5, stride=1, out=160, expand=4.0),  # ExtraDW
            MQA(heads=4, key_dim=64, kv_stride=2, out=160),
            UIB(start=3, mid=3, stride=1, out=160, expand=4.0),  # ExtraDW
            MQA(heads=4, key_dim=64, kv_stride=2, out=160),
            UIB(start=3, mid=0, stride=1, out=160, expand=4.0),  # ConvNeXt
            MQA(heads=4, key_dim=64, kv_stride=2, out=160),
            UIB(start=3, mid=3, stride=1, out=160, expand=4.0),  # ExtraDW
            MQA(heads=4, key_dim=64, kv_stride=2, out=160),
            UIB(start=3, mid=0, stride=1, out=160, expand=4.0),  # ConvNeXt
        ),
        (
            UIB(start=5, mid=5, stride=2, out=256, expand=6.0),  # ExtraDW
            UIB(start=5, mid=5, stride=1, out=256, expand=4.0),  # ExtraDW
            *repeat(UIB(start=3, mid=5, stride=1, out=256, expand=4.0), 2),  # ExtraDW
            UIB(start=0, mid=0, stride=1, out=256, expand=2.0),  # FFN
            UIB(start=3, mid=5, stride=1, out=256, expand=2.0),  # ExtraDW
            UIB(start=0, mid=0, stride=1, out=256, expand=2.0),  # FFN
            UIB(start=0, mid=0, stride=1, out=256, expand=4.0),  # FFN
            MQA(heads=4, key_dim=64, kv_stride=1, out=256),
            UIB(start=3, mid=0, stride=1, out=256, expand=4.0),  # ConvNeXt
            MQA(heads=4, key_dim=64, kv_stride=1, out=256),
            UIB(start=5, mid=5, stride=1, out=256, expand=4.0),  # ExtraDW
            MQA(heads=4, key_dim=64, kv_stride=1, out=256),
            UIB(start=5, mid=0, stride=1, out=256, expand=4.0),  # ConvNeXt
            MQA(heads=4, key_dim=64, kv_stride=1, out=256),
            UIB(start=5, mid=0, stride=1, out=256, expand=4.0),  # ConvNeXt
        ),
        (HEAD_CONV,),
    ),
    preprocessing=_default(256, 0.95),
    layer_scale=1e-5,
    pretrained_tags=(
        "e200_r256_in12k_ft_in1k", "ix_e550_r256_in1k", "ix_e550_r384_in1k", "e500_r224_in1k",
    ),
)

HYBRID_LARGE = VariantSpec(
    name="hybrid_large",
    stem=24,
    stages=(
        (FusedIB(kernel=3, stride=2, out=48, expand=4.0),),
        (
            UIB(start=3, mid=5, stride=2, out=96, expand=4.0),  # ExtraDW
            UIB(start=3, mid=3, stride=1, out=96, expand=4.0),  # ExtraDW
        ),
        (
            UIB(start=3, mid=5, stride=2, out=192, expand=4.0),  # ExtraDW
            *repeat(UIB(start=3, mid=3, stride=1, out=192, expand=4.0), 3),  # ExtraDW
            UIB(start=3, mid=5, stride=1, out=192, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=3, stride=1, out=192, expand=4.0), 2),  # ExtraDW
            MQA(heads=8, key_dim=48, kv_stride=2, out=192),
            UIB(start=5, mid=3, stride=1, out=192, expand=4.0),  # ExtraDW
            MQA(heads=8, key_dim=48, kv_stride=2, out=192),
            UIB(start=5, mid=3, stride=1, out=192, expand=4.0),  # ExtraDW
            MQA(heads=8, key_dim=48, kv_stride=2, out=192),
            UIB(start=5, mid=3, stride=1, out=192, expand=4.0),  # ExtraDW
            MQA(heads=8, key_dim=48, kv_stride=2, out=192),
            UIB(start=3, mid=0, stride=1, out=192, expand=4.0),  # ConvNeXt
        ),
        (
            UIB(start=5, mid=5, stride=2, out=512, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=5, stride=1, out=512, expand=4.0), 3),  # ExtraDW
            UIB(start=5, mid=0, stride=1, out=512, expand=4.0),  # ConvNeXt
            UIB(start=5, mid=3, stride=1, out=512, expand=4.0),  # ExtraDW
            *repeat(UIB(start=5, mid=0, stride=1, out=512, expand=4.0), 2),  # ConvNeXt
            UIB(start=5, mid=3, stride=1, out=512, expand=4.0),  # ExtraDW
            UIB(start=5, mid=5, stride=1, out=512, expand=4.0),  # ExtraDW
            MQA(heads=8, key_dim=64, kv_stride=1, out=512),
            UIB(start=5, mid=0, stride=1, out=512, expand=4.0),  # ConvNeXt
            MQA(heads=8, key_dim=64, kv_stride=1, out=512),
            UIB(start=5, mid=0, stride=1, out=512, expand=4.0),  # ConvNeXt
            MQA(heads=8, key_dim=64, kv_stride=1, out=512),
            UIB(start=5, mid=0, stride=1, out=512, expand=4.0),  # ConvNeXt
            MQA(heads=8, key_dim=64, kv_stride=1, out=512),
            UIB(start=5, mid=0, stride=1, out=512, expand=4.0),  # ConvNeXt
        ),
        (HEAD_CONV,),
    ),
    preprocessing=_default(384, 0.95),
    activation="gelu",
    layer_scale=1e-5,
    pretrained_tags=("ix_e600_r384_in1k", "e600_r384_in1k"),
)

# timm's derived variants: width multipliers and anti-aliased downsampling on the same tables.
VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        CONV_SMALL,
        CONV_MEDIUM,
        CONV_LARGE,
        HYBRID_MEDIUM,
        HYBRID_LARGE,
        replace(CONV_SMALL, name="conv_small_035", width=0.35,
                preprocessing=_default(224, 0.875, inception=True), pretrained_tags=()),
        replace(CONV_SMALL, name="conv_small_050", width=0.5,
                preprocessing=_default(224, 0.875, inception=True), pretrained_tags=("e3000_r224_in1k",)),
        replace(CONV_MEDIUM, name="conv_aa_medium", anti_alias="avg", pretrained_tags=()),
        replace(CONV_MEDIUM, name="conv_blur_medium", anti_alias="blurpc",
                preprocessing=_default(224, 0.95), pretrained_tags=("e500_r224_in1k",)),
        replace(CONV_LARGE, name="conv_aa_large", anti_alias="avg", preprocessing=_default(448, 0.95),
                pretrained_tags=("e230_r448_in12k_ft_in1k", "e230_r384_in12k_ft_in1k", "e600_r384_in1k")),
        replace(HYBRID_MEDIUM, name="hybrid_medium_075", width=0.75,
                preprocessing=_default(224, 0.95), pretrained_tags=()),
        replace(HYBRID_LARGE, name="hybrid_large_075", width=0.75,
                preprocessing=_default(256, 0.95), pretrained_tags=()),
    )
}

# Preprocessing of the timm checkpoints whose eval transform differs from their variant's default.
TAG_PREPROCESSING: dict[tuple[str, str], Preprocessing] = {
    ("conv_small", "e3600_r256_in1k"): _default(256, 0.95, inception=True),
    ("conv_medium", "e500_r224_in1k"): _default(224, 0.95),
    ("conv_medium", "e250_r384_in12k_ft_in1k"): _default(384, 0.95),
    ("conv_large", "e500_r256_in1k"): _default(256, 0.95),
    ("hybrid_medium", "ix_e550_r384_in1k"): _default(384, 0.95),
    ("hybrid_medium", "e500_r224_in1k"): _default(224, 0.95),
    ("conv_aa_large", "e230_r384_in12k_ft_in1k"): _default(384, 0.95),
    ("conv_aa_large", "e600_r384_in1k"): _default(384, 0.95),
}

# The seed port's model names, kept so that its users' code runs unchanged.
SEED_NAMES = {
    "MobileNetV4ConvSmall": "conv_small",
    "MobileNetV4ConvMedium": "conv_medium",
    "MobileNetV4ConvLarge": "conv_large",
    "MobileNetV4HybridMedium": "hybrid_medium",
    "MobileNetV4HybridLarge": "hybrid_large",
}

PAPER_VARIANTS = ("conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large")


def get_spec(name: str) -> VariantSpec:
    from ..errors import UnknownVariantError

    spec = VARIANTS.get(SEED_NAMES.get(name, name))
    if spec is None:
        raise UnknownVariantError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
    return spec
