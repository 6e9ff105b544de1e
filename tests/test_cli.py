"""The model commands, run as users run them (in this process, real files): `info`, `predict`, their help, and bad
input as one error line with exit code 2. The other exit codes have their own tests: 1 in test_export_pipeline
(verify against a wrong reference), 3 and 128 + N in test_faults (a planted bug, signals)."""
import pytest
import torch
from conftest import assert_one_line_error

import mnv4
from mnv4.data import imagenet_class_names


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "conv_small.pth"
    torch.manual_seed(0)
    torch.save(mnv4.create_model("conv_small").state_dict(), path)
    return path


def test_info_prints_params_macs_preprocessing_and_layers(cli):
    result = cli("info", "--variant", "hybrid_medium")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "11,074,648 parameters" in out and "1.271 GMACs" in out
    assert "default resolution: 256" in out and "crop_pct 0.95" in out and "bicubic" in out
    assert "blocks.2.4" in out and "MobileMQABlock" in out and "[1, 160, 16, 16]" in out


def test_info_at_another_resolution(cli):
    result = cli("info", "--variant", "conv_small", "--resolution", "256")
    assert result.returncode == 0 and "input [3, 256, 256]" in result.stdout


def test_predict_prints_the_models_own_top_k(checkpoint, cat_photo, cli):
    from PIL import Image

    result = cli("predict", cat_photo, "--variant", "conv_small", "--weights", checkpoint, "--top", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("1. ")
    model = mnv4.create_model("conv_small", pretrained=checkpoint)
    with torch.no_grad():
        logits = model(torch.from_numpy(model.preprocessing(Image.open(cat_photo))[None]))[0]
    top = logits.topk(3).indices.tolist()
    names = imagenet_class_names()
    for line, index in zip(lines, top):
        assert f"{names[index]} (index {index})" in line


@pytest.mark.parametrize("args, fragments", [
    (("info", "--variant", "conv_tiny"), ("unknown variant 'conv_tiny'", "conv_small", "hybrid_large_075")),
    (("predict", "missing.jpg", "--variant", "conv_small", "--weights", "{ckpt}"), ("image not found",)),
    (("predict", "{img}", "--variant", "conv_small", "--weights", "absent.pth"), ("checkpoint not found",)),
    (("predict", "{img}", "--variant", "conv_small", "--weights", "{img}"), ("not a readable checkpoint",)),
    (("predict", "{img}", "--variant", "conv_medium", "--weights", "{ckpt}"),
     ("does not fit conv_medium", "mis-shaped keys")),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments, checkpoint, cat_photo, cli):
    args = [a.format(ckpt=checkpoint, img=cat_photo) for a in args]
    assert_one_line_error(cli(*args), *fragments)


@pytest.mark.parametrize("command", [(), ("info",), ("predict",)])
def test_help_is_complete(command, cli):
    result = cli(*command, "--help")
    assert result.returncode == 0
    for option in {(): ["info", "predict"], ("info",): ["--variant", "--resolution"],
                   ("predict",): ["IMAGE", "--variant", "--weights", "--top"]}[command]:
        assert option in result.stdout
