"""Checkpoint loading: formats, layouts, errors, the offline Hugging Face cache."""
import logging

import pytest
import torch
from safetensors.torch import save_file

import mnv4
from mnv4.errors import CheckpointError
from mnv4.model.weights import hf_repo_id


@pytest.fixture(scope="module")
def trained_like():
    """A conv_small whose weights differ from a fresh model's, and its state dict."""
    torch.manual_seed(3)
    model = mnv4.create_model("conv_small")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.01)
    return model, model.state_dict()


def outputs_equal(a, b):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_loads_each_file_format(trained_like, tmp_path, suffix):
    model, state = trained_like
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = mnv4.create_model("conv_small", pretrained=path)
    assert outputs_equal(model, loaded)
    assert loaded.checkpoint == path


def test_unwraps_training_containers_and_prefixes(trained_like, tmp_path):
    model, state = trained_like
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    assert outputs_equal(model, mnv4.create_model("conv_small", pretrained=path))


def test_other_num_classes_keeps_backbone_and_says_so(trained_like, tmp_path, caplog):
    model, state = trained_like
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="mnv4"):
        loaded = mnv4.create_model("conv_small", pretrained=path, num_classes=10)
    assert "1000-class classifier" in caplog.text and "10-class" in caplog.text
    assert loaded.classifier.out_features == 10
    assert torch.equal(loaded.conv_stem.weight, state["conv_stem.weight"])


def test_features_only_ignores_the_head(trained_like, tmp_path):
    _, state = trained_like
    path = tmp_path / "w.pth"
    torch.save(state, path)
    backbone = mnv4.create_model("conv_small", pretrained=path, features_only=True)
    assert torch.equal(backbone.conv_stem.weight, state["conv_stem.weight"])


@pytest.mark.parametrize("damage, named", [
    (lambda s: s.pop("blocks.2.0.pw_exp.conv.weight"), "missing keys: blocks.2.0.pw_exp.conv.weight"),
    (lambda s: s.__setitem__("blocks.9.extra", torch.zeros(1)), "unexpected keys: blocks.9.extra"),
    (lambda s: s.__setitem__("conv_stem.weight", torch.zeros(16, 3, 3, 3)),
     "mis-shaped keys: conv_stem.weight (16, 3, 3, 3) != (32, 3, 3, 3)"),
])
def test_bad_checkpoints_name_the_offending_keys(trained_like, tmp_path, damage, named):
    state = dict(trained_like[1])
    damage(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit conv_small") as error:
        mnv4.create_model("conv_small", pretrained=path)
    assert named in str(error.value)


def test_missing_path_and_non_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        mnv4.create_model("conv_small", pretrained=tmp_path / "absent.safetensors")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        mnv4.create_model("conv_small", pretrained=text)
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(CheckpointError, match="holds no mapping of names to tensors"):
        mnv4.create_model("conv_small", pretrained=not_tensors)


class CodeOnLoad:
    """Unpickling this object would create a file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_not_run(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    torch.save({"conv_stem.weight": torch.zeros(1), "payload": CodeOnLoad(marker)}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        mnv4.create_model("conv_small", pretrained=path)
    assert not marker.exists()


def fake_hf_cache(cache_dir, repo_id, state):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/file}."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


def test_pretrained_true_reads_the_local_hf_cache(trained_like, tmp_path, monkeypatch):
    model, state = trained_like
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    # The third tag of conv_small uses 256 px and Inception normalisation: the model must say so.
    fake_hf_cache(tmp_path, hf_repo_id("conv_small", "e3600_r256_in1k"), state)
    loaded = mnv4.create_model("conv_small", pretrained=True)
    assert outputs_equal(model, loaded)
    assert loaded.preprocessing.resolution == 256 and loaded.preprocessing.mean == (0.5, 0.5, 0.5)


def test_pretrained_true_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="timm/mobilenetv4_conv_small.e2400_r224_in1k"):
        mnv4.create_model("conv_small", pretrained=True)
    with pytest.raises(CheckpointError, match="publishes no trained weights"):
        mnv4.create_model("conv_small_035", pretrained=True)
