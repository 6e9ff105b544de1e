"""The seed port's public API, with none of its bugs."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mnv4
from mnv4 import (
    InvertedResidual,
    MNV4LayerScale,
    MobileNetV4,
    MultiHeadSelfAttentionBlock,
    MultiQueryAttentionLayerWithDownSampling,
    UniversalInvertedBottleneckBlock,
)
from mnv4.errors import InputShapeError, UnknownVariantError

EXAMPLE = Path(__file__).parent.parent / "examples" / "seed_usage.py"


def test_seed_usage_example_runs_unchanged():
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 1000])" in result.stdout
    assert "32,590,864 parameters" in result.stdout


@pytest.mark.parametrize("seed_name, variant", [
    ("MobileNetV4ConvSmall", "conv_small"), ("MobileNetV4ConvMedium", "conv_medium"),
    ("MobileNetV4ConvLarge", "conv_large"), ("MobileNetV4HybridMedium", "hybrid_medium"),
    ("MobileNetV4HybridLarge", "hybrid_large"),
])
def test_seed_model_names_and_factories(seed_name, variant):
    factory = {"conv_small": mnv4.mobilenetv4_small, "conv_medium": mnv4.mobilenetv4_medium,
               "conv_large": mnv4.mobilenetv4_large, "hybrid_medium": mnv4.mobilenetv4_hybrid_medium,
               "hybrid_large": mnv4.mobilenetv4_hybrid_large}[variant]
    by_seed_name = MobileNetV4(model=seed_name, num_classes=10)
    by_factory = factory(pretrained=False, num_classes=10)
    assert by_seed_name.variant == by_factory.variant == variant
    assert by_factory.classifier.out_features == 10


def test_uib_has_a_residual():
    block = UniversalInvertedBottleneckBlock(16, 16, start_kernel=3, mid_kernel=3, expand=2.0).eval()
    for module in block.modules():  # make the residual branch output exactly zero
        if isinstance(module, nn.BatchNorm2d):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    x = torch.randn(1, 16, 8, 8)
    assert torch.equal(block(x), x)


def test_layer_scale_is_learnable_and_per_channel():
    scale = MNV4LayerScale(8, 1e-5)
    assert isinstance(scale.gamma, nn.Parameter) and scale.gamma.shape == (8,)
    x = torch.ones(1, 8, 3, 5)
    with torch.no_grad():
        scale.gamma.copy_(torch.arange(8.0))
    assert torch.equal(scale(x)[0, :, 0, 0], torch.arange(8.0))
    assert torch.equal(scale(x)[0, 3], torch.full((3, 5), 3.0))


def test_mqa_shares_one_key_and_value_head_and_scales_by_sqrt_key_dim():
    attention = MultiQueryAttentionLayerWithDownSampling(32, 32, heads=4, key_dim=16, value_dim=16, kv_stride=2)
    assert attention.query.proj.out_channels == 64
    assert attention.key.proj.out_channels == attention.value.proj.out_channels == 16
    assert attention.key.down_conv.stride == (2, 2) and attention.key.down_conv.groups == 32
    assert attention.scale == pytest.approx(16 ** -0.5)
    block = MultiHeadSelfAttentionBlock(32, 32, heads=4, key_dim=16, kv_stride=2)
    assert isinstance(block.norm, nn.BatchNorm2d) and block.has_skip


def test_fused_ib_residual_and_expansion():
    block = InvertedResidual(48, 48, kernel=3, stride=1, expand=4.0)
    assert block.has_skip and block.conv_exp.out_channels == 192


def test_activations_relu_and_gelu_and_pooling_before_the_head_conv():
    small, hybrid_large = mnv4.create_model("conv_small"), mnv4.create_model("hybrid_large")
    assert not any(isinstance(m, (nn.ReLU6, nn.GELU)) for m in small.modules())
    assert any(isinstance(m, nn.GELU) for m in hybrid_large.modules())
    assert not any(isinstance(m, nn.ReLU) for m in hybrid_large.modules())
    head_inputs = []
    small.conv_head.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0].shape))
    small(torch.randn(1, 3, 224, 224))
    assert head_inputs == [(1, 960, 1, 1)]


def test_no_flatten_op_in_the_exported_graph():
    program = torch.export.export(mnv4.create_model("conv_small"), (torch.randn(2, 3, 64, 64),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("flatten" in target for target in targets)


def test_list_variants_reset_classifier_and_forward_parts():
    assert len(mnv4.list_variants()) == 12 and mnv4.list_variants()[0] == "conv_small"
    model = mnv4.create_model("conv_small")
    model.reset_classifier(7)
    x = torch.randn(2, 3, 96, 96)
    features = model.forward_features(x)
    assert features.shape == (2, 960, 3, 3)
    assert model.forward_head(features, pre_logits=True).shape == (2, 1280)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, 1280)


@pytest.mark.parametrize("shape, message", [
    ((3, 224, 224), r"expected an NCHW batch of shape \(N, 3, H, W\), got \(3, 224, 224\)"),
    ((1, 1, 64, 64), r"got \(1, 1, 64, 64\)"),
])
def test_wrong_input_rank_or_channels_is_a_clear_error(shape, message):
    with pytest.raises(InputShapeError, match=message):
        mnv4.create_model("conv_small")(torch.randn(*shape))


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(UnknownVariantError, match="choose one of: conv_small, conv_medium"):
        mnv4.create_model("conv_xl")
