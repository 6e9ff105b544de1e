"""The reference model against timm, its trained twin: parameters, MACs, numerics, features."""
import numpy as np
import pytest
import timm
import torch
from conftest import randomise_weights, relative_error

import mnv4
from mnv4.model import PAPER_VARIANTS, VARIANTS

PAPER_MACS = {"conv_small": 0.186e9, "conv_medium": 1.080e9, "conv_large": 6.376e9,
              "hybrid_medium": 1.271e9, "hybrid_large": 7.712e9}
# A second resolution per variant: smaller than the default (keeps the suite fast) and not a multiple
# of 64, so that odd feature-map sizes (e.g. 5x5 with a stride-2 key/value downsample) are exercised.
OTHER_RESOLUTION = 160


def timm_model(variant, **kwargs):
    return timm.create_model(f"mobilenetv4_{variant}", **kwargs).eval()


def set_timm_fused_attention(model, fused: bool):
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_count_and_keys_equal_timm(variant):
    ours, reference = mnv4.create_model(variant), timm_model(variant)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    assert all(ours_state[k].shape == reference_state[k].shape for k in ours_state)


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_macs_match_the_paper(variant):
    resolution = mnv4.create_model(variant).preprocessing.resolution
    macs = mnv4.profile(mnv4.create_model(variant), (3, resolution, resolution)).macs
    assert macs == pytest.approx(PAPER_MACS[variant], rel=0.01)


def test_conv_small_parameter_count_is_the_released_one():
    assert sum(p.numel() for p in mnv4.create_model("conv_small").parameters()) == 3_774_024


# The large variants (384 and 448 px, the slowest of the suite's CPU time) run in the matrix tier: every block type they
# use is proven in the default suite by the smaller variants.
LARGE = ("conv_large", "hybrid_large", "conv_aa_large")


@pytest.mark.parametrize("variant", [pytest.param(name, marks=pytest.mark.matrix) if name in LARGE else name
                                     for name in VARIANTS])
def test_numerically_identical_to_timm(variant, photo_images, tmp_path):
    """timm's model with randomised weights, saved and loaded into ours through the public loader,
    computes the same logits on real photos and random inputs, at two resolutions, with explicit
    attention and with fused SDPA."""
    reference = timm_model(variant)
    default = VARIANTS[variant].preprocessing
    photos_default = torch.from_numpy(default.batch(photo_images.values()))
    randomise_weights(reference, photos_default)
    checkpoint = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), checkpoint)
    generator = torch.Generator().manual_seed(1)
    has_attention = "hybrid" in variant
    for resolution, photo_count in ((default.resolution, 9), (OTHER_RESOLUTION, 4)):
        photos = torch.from_numpy(default.at(resolution).batch(list(photo_images.values())[:photo_count]))
        inputs = torch.cat([photos, torch.randn(2, 3, resolution, resolution, generator=generator)])
        for fused in (False, True) if has_attention else (False,):
            set_timm_fused_attention(reference, fused)
            ours = mnv4.create_model(variant, pretrained=checkpoint, fused_attention=fused)
            with torch.no_grad():
                expected, actual = reference(inputs).numpy(), ours(inputs).numpy()
            assert expected.std() > 0.1, "logits too flat to prove anything"
            assert relative_error(expected, actual) <= 1e-5, (resolution, fused)
            np.testing.assert_array_equal(expected.argmax(1), actual.argmax(1))


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_features_only_matches_timm(variant):
    reference = timm_model(variant, features_only=True)
    ours = mnv4.create_model(variant, features_only=True)
    assert ours.feature_channels == reference.feature_info.channels()
    assert ours.feature_reductions == reference.feature_info.reduction() == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert [m.shape for m in ours(x)] == [m.shape for m in reference(x)]


def test_features_only_out_indices_select_maps_and_drop_later_stages():
    model = mnv4.create_model("conv_medium", features_only=True, out_indices=(1, 3))
    maps = model(torch.randn(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == model.feature_channels == [48, 160]
    assert [64 // m.shape[-1] for m in maps] == model.feature_reductions == [4, 16]
    assert len(model.blocks) == 3
    assert not hasattr(model, "classifier")
