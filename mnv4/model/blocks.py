"""MobileNetV4's building blocks.

Module and parameter names follow timm (`conv_stem`, `dw_start.conv`, `attn.query.proj`, ...) so that
timm's trained checkpoints load without renaming. The seed port's public class names are aliases at the
bottom of this file.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), bumped up when rounding lost more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv2d(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with symmetric padding (PyTorch/timm style, not TensorFlow's 'same')."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False)


class BlurPool(nn.Module):
    """3x3 binomial blur ([1, 2, 1] / 4 outer product), zero padding, stride 2, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).contiguous()
        # Fixed, not learned, and absent from checkpoints (a non-persistent buffer in timm too).
        self.register_buffer("filt", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filt, stride=2, padding=1, groups=self.filt.shape[0])


def downsampling(stride: int, anti_alias: str | None, channels: int) -> tuple[int, nn.Module | None]:
    """(conv stride, anti-aliasing pool). timm's anti-aliased variants run a strided conv at stride 1
    and let a pool after the activation downsample: "avg" a 2x2 average, "blurpc" a binomial blur."""
    if stride == 1 or anti_alias is None:
        return stride, None
    if anti_alias == "avg":
        return 1, nn.AvgPool2d(2)
    if anti_alias == "blurpc":
        return 1, BlurPool(channels)
    raise ValueError(f"unknown anti-aliasing {anti_alias!r}")


class ConvNormAct(nn.Module):
    """Conv -> BatchNorm -> optional activation -> optional anti-aliasing pool (keys `conv`, `bn`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: str | None = "relu", anti_alias: str | None = None):
        super().__init__()
        conv_stride, self.aa = downsampling(stride, anti_alias, out_channels)
        self.conv = conv2d(in_channels, out_channels, kernel, conv_stride, groups)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = ACTIVATIONS[activation]() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        return x if self.aa is None else self.aa(x)


class ConvBN(nn.Module):
    """Conv -> BatchNorm -> activation, no residual (timm's ConvBnAct: keys `conv`, `bn1`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 activation: str = "relu", anti_alias: str | None = None):
        super().__init__()
        conv_stride, self.aa = downsampling(stride, anti_alias, out_channels)
        self.conv = conv2d(in_channels, out_channels, kernel, conv_stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv(x)))
        return x if self.aa is None else self.aa(x)


class LayerScale(nn.Module):
    """Learnable per-channel scale of an NCHW tensor, initialised small (1e-5) so that a new block
    starts close to identity through its residual."""

    def __init__(self, channels: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class FusedIB(nn.Module):
    """Fused inverted bottleneck: k x k conv expanding the width -> BN -> act -> 1x1 projection -> BN,
    plus the input when shapes allow (timm's EdgeResidual)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 expand: float = 4.0, activation: str = "relu", anti_alias: str | None = None):
        super().__init__()
        mid_channels = make_divisible(in_channels * expand)
        self.has_skip = in_channels == out_channels and stride == 1
        conv_stride, self.aa = downsampling(stride, anti_alias, mid_channels)
        self.conv_exp = conv2d(in_channels, mid_channels, kernel, conv_stride)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.act = ACTIVATIONS[activation]()
        self.conv_pwl = conv2d(mid_channels, out_channels, 1)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv_exp(x)))
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn2(self.conv_pwl(out))
        return out + x if self.has_skip else out


class UniversalInvertedBottleneck(nn.Module):
    """UIB: [start depthwise (BN, no act)] -> 1x1 expand (BN, act) -> [middle depthwise (BN, act)]
    -> 1x1 project (BN) -> [layer scale] -> + input when shapes allow.

    A kernel of 0 leaves that depthwise conv out. The stride sits on the middle depthwise conv, or on
    the start one when there is no middle one."""

    def __init__(self, in_channels: int, out_channels: int, start_kernel: int, mid_kernel: int,
                 stride: int = 1, expand: float = 4.0, activation: str = "relu",
                 layer_scale: float | None = None, anti_alias: str | None = None):
        super().__init__()
        if stride > 1 and not (start_kernel or mid_kernel):
            raise ValueError("a strided UIB needs a depthwise conv to carry the stride")
        mid_channels = make_divisible(in_channels * expand)
        self.has_skip = in_channels == out_channels and stride == 1
        self.dw_start = (
            ConvNormAct(in_channels, in_channels, start_kernel, stride if not mid_kernel else 1,
                        groups=in_channels, activation=None, anti_alias=anti_alias)
            if start_kernel else nn.Identity()
        )
        self.pw_exp = ConvNormAct(in_channels, mid_channels, 1, activation=activation)
        self.dw_mid = (
            ConvNormAct(mid_channels, mid_channels, mid_kernel, stride, groups=mid_channels,
                        activation=activation, anti_alias=anti_alias)
            if mid_kernel else nn.Identity()
        )
        self.pw_proj = ConvNormAct(mid_channels, out_channels, 1, activation=None)
        self.layer_scale = LayerScale(out_channels, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer_scale(self.pw_proj(self.dw_mid(self.pw_exp(self.dw_start(x)))))
        return out + x if self.has_skip else out


class MultiQueryAttention(nn.Module):
    """Mobile multi-query attention over an NCHW map.

    `heads` query heads share one key head and one value head. With kv_stride 2, keys and values are
    computed from a map downsampled by a 3x3 depthwise conv + BN, cutting the attention cost by 4.
    Written with explicit matmul and softmax and reshapes that keep only the batch free, which every
    exporter lowers; `fused=True` uses scaled_dot_product_attention instead (same result, faster on GPU).
    """

    def __init__(self, channels: int, out_channels: int, heads: int, key_dim: int, value_dim: int,
                 kv_stride: int = 1, fused: bool = False):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.scale = key_dim ** -0.5
        self.fused = fused
        self.query = nn.Sequential(OrderedDict(proj=conv2d(channels, heads * key_dim, 1)))
        self.key = self._shared_head(channels, key_dim, kv_stride)
        self.value = self._shared_head(channels, value_dim, kv_stride)
        self.output = nn.Sequential(OrderedDict(proj=conv2d(heads * value_dim, out_channels, 1)))

    @staticmethod
    def _shared_head(channels: int, dim: int, kv_stride: int) -> nn.Sequential:
        layers = OrderedDict()
        if kv_stride > 1:
            layers["down_conv"] = conv2d(channels, channels, 3, kv_stride, groups=channels)
            layers["norm"] = nn.BatchNorm2d(channels)
        layers["proj"] = conv2d(channels, dim, 1)
        return nn.Sequential(layers)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, HW, key_dim); query channels are head-major: channel h * key_dim + d is head h's."""
        height, width = x.shape[-2:]
        return self.query(x).reshape(-1, self.heads, self.key_dim, height * width).transpose(-1, -2).contiguous()

    def attention_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-softmax scores (B, heads, HW, hw): what weight calibration keeps in a sane range."""
        return (self._queries(x) * self.scale) @ self._one_head(self.key(x)).transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        # The reshapes and memory layouts follow timm's step for step, so that the matmuls see the same
        # operand layouts and round the same way (attention amplifies any rounding difference).
        v = self._one_head(self.value(x))
        if self.fused:
            o = F.scaled_dot_product_attention(self._queries(x), self._one_head(self.key(x)), v)
        else:
            o = self.attention_logits(x).softmax(dim=-1) @ v
        # (B, heads, HW, value_dim) -> (B, heads * value_dim, H, W), head-major channels again.
        o = o.transpose(1, 2).reshape(-1, height, width, self.heads * self.value_dim).permute(0, 3, 1, 2)
        return self.output(o.contiguous())

    @staticmethod
    def _one_head(t: torch.Tensor) -> torch.Tensor:
        """(B, dim, h, w) -> (B, 1, h * w, dim): one head that broadcasts over the query heads."""
        return t.reshape(-1, t.shape[1], t.shape[2] * t.shape[3]).transpose(1, 2).unsqueeze(1).contiguous()


class MobileMQABlock(nn.Module):
    """Pre-norm attention block: BN -> multi-query attention -> layer scale -> + input."""

    def __init__(self, in_channels: int, out_channels: int, heads: int, key_dim: int, kv_stride: int = 1,
                 layer_scale: float | None = 1e-5, fused_attention: bool = False):
        super().__init__()
        self.has_skip = in_channels == out_channels
        self.norm = nn.BatchNorm2d(in_channels)
        self.attn = MultiQueryAttention(in_channels, out_channels, heads, key_dim, key_dim, kv_stride,
                                        fused=fused_attention)
        self.layer_scale = LayerScale(out_channels, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer_scale(self.attn(self.norm(x)))
        return out + x if self.has_skip else out


# The seed port's public names, now naming the corrected blocks.
InvertedResidual = FusedIB
UniversalInvertedBottleneckBlock = UniversalInvertedBottleneck
MultiQueryAttentionLayerWithDownSampling = MultiQueryAttention
MultiHeadSelfAttentionBlock = MobileMQABlock
MNV4LayerScale = LayerScale
