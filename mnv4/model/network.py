"""The MobileNetV4 network, built from a variant's spec table."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..artifact.options import MAX_CLASSES
from ..errors import InputShapeError, MNV4Error
from . import specs
from .blocks import ACTIVATIONS, ConvBN, FusedIB, MobileMQABlock, UniversalInvertedBottleneck, conv2d, make_divisible


def _check_options(num_classes, in_chans, drop_rate) -> None:
    _check_count("num_classes", num_classes, 0, MAX_CLASSES)  # 0: no classifier, as in timm
    _check_count("in_chans", in_chans, 1, 64)
    if not 0 <= drop_rate < 1:
        raise MNV4Error(f"drop_rate must be from 0 to below 1, got {drop_rate!r}")


def _check_count(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MNV4Error(f"{name} must be an integer from {low} to {high}, got {value!r}")


@dataclass(frozen=True)
class FeatureTap:
    """Where a multi-scale feature map is taken: after the stem (stage -1) or after a stage."""

    stage: int
    channels: int
    reduction: int


def build_block(block: specs.Block, in_channels: int, out_channels: int, spec: specs.VariantSpec,
                fused_attention: bool) -> nn.Module:
    if isinstance(block, specs.ConvBN):
        return ConvBN(in_channels, out_channels, block.kernel, block.stride, spec.activation, spec.anti_alias)
    if isinstance(block, specs.FusedIB):
        return FusedIB(in_channels, out_channels, block.kernel, block.stride, block.expand, spec.activation,
                       spec.anti_alias)
    if isinstance(block, specs.UIB):
        return UniversalInvertedBottleneck(in_channels, out_channels, block.start, block.mid, block.stride,
                                           block.expand, spec.activation, spec.layer_scale, spec.anti_alias)
    if isinstance(block, specs.MQA):
        return MobileMQABlock(in_channels, out_channels, block.heads, block.key_dim, block.kv_stride,
                              spec.layer_scale, fused_attention)
    raise TypeError(f"unknown block spec {block!r}")


def _init_weights(module: nn.Module) -> None:
    """He init for convs and a small normal init for the classifier (the usual MobileNet recipe);
    layer scale keeps its own init value."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.01)
        nn.init.zeros_(module.bias)


class MobileNetV4(nn.Module):
    """MobileNetV4 classifier (or multi-scale backbone with `features_only=True`).

    `model` is a variant name ("conv_small", ...), a seed-port name ("MobileNetV4ConvSmall", ...) or a
    VariantSpec. The state-dict layout is timm's.
    """

    def __init__(
        self,
        model: str | specs.VariantSpec = "MobileNetV4ConvSmall",
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        fused_attention: bool = False,
        features_only: bool = False,
        out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    ):
        super().__init__()
        _check_options(num_classes, in_chans, drop_rate)
        spec = model if isinstance(model, specs.VariantSpec) else specs.get_spec(model)
        self.spec = spec
        self.variant = spec.name
        self.preprocessing = spec.preprocessing
        self.in_chans = in_chans
        self.num_classes = num_classes

        self.conv_stem = conv2d(in_chans, spec.stem, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(spec.stem)
        self.act1 = ACTIVATIONS[spec.activation]()

        stages, taps = [], []
        channels, reduction = spec.stem, 2
        if spec.stages[0][0].stride > 1:
            taps.append(FeatureTap(-1, channels, reduction))
        for index, stage in enumerate(spec.stages):
            blocks = []
            for block in stage:
                out_channels = make_divisible(block.out * spec.width) if spec.width != 1.0 else block.out
                blocks.append(build_block(block, channels, out_channels, spec, fused_attention))
                channels, reduction = out_channels, reduction * block.stride
            stages.append(nn.Sequential(*blocks))
            # A scale ends where the next stage downsamples (or at the last stage), as in timm.
            is_last = index == len(spec.stages) - 1
            if is_last or spec.stages[index + 1][0].stride > 1:
                taps.append(FeatureTap(index, channels, reduction))
        self.blocks = nn.Sequential(*stages)
        self.num_features = channels
        self.head_hidden_size = spec.head_hidden

        self.features_only = features_only
        if features_only:
            if not out_indices or any(not 0 <= i < len(taps) for i in out_indices):
                raise ValueError(f"out_indices must be within 0..{len(taps) - 1}, got {tuple(out_indices)}")
            self.out_indices = tuple(out_indices)
            self.feature_taps = [taps[i] for i in self.out_indices]
            # Stages past the deepest requested map are never run, so they are not built.
            del self.blocks[max(tap.stage for tap in self.feature_taps) + 1:]
        else:
            self.conv_head = conv2d(channels, spec.head_hidden, 1)
            self.norm_head = nn.BatchNorm2d(spec.head_hidden)
            self.act2 = ACTIVATIONS[spec.activation]()
            self.drop_rate = drop_rate
            self.dropout = nn.Dropout(drop_rate)
            self.classifier = nn.Linear(spec.head_hidden, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @property
    def feature_channels(self) -> list[int]:
        return [tap.channels for tap in self.feature_taps]

    @property
    def feature_reductions(self) -> list[int]:
        return [tap.reduction for tap in self.feature_taps]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise InputShapeError(
                f"expected an NCHW batch of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.act1(self.bn1(self.conv_stem(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) image batch -> the last stage's (N, num_features, H/32, W/32) map."""
        return self.blocks(self.forward_stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool -> 1x1 conv to 1280 -> BN -> act -> dropout -> classifier.

        Pooling keeps the spatial axes and the final reshape names only the channel count, so no
        Flatten op reaches the exporters and the batch axis stays free."""
        x = x.mean(dim=(2, 3), keepdim=True)
        x = self.act2(self.norm_head(self.conv_head(x)))
        x = self.dropout(x.reshape(-1, self.head_hidden_size))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor):
        if not self.features_only:
            return self.forward_head(self.forward_features(x))
        maps = []
        x = self.forward_stem(x)
        wanted = {tap.stage for tap in self.feature_taps}
        if -1 in wanted:
            maps.append(x)
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in wanted:
                maps.append(x)
        return maps

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for `num_classes` (0: no classifier)."""
        _check_count("num_classes", num_classes, 0, MAX_CLASSES)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
