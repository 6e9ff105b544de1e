"""Fine-tuned checkpoints are the normal case: a checkpoint trained on another number of classes loads, exports
and verifies with that many classes, `--labels` puts their names in the manifest and `mnv4 run` prints them;
labels that don't fit and a classifier that fits no variant are one error line and exit 2."""
import json

import pytest
import torch
from conftest import RESOLUTION, assert_one_line_error
from PIL import Image
from safetensors.torch import save_file

import mnv4
from mnv4.artifact.manifest import manifest_path

FRUIT = ["apple", "banana", "cherry", "date", "elderberry", "fig", "grape"]


def save(state: dict, path):
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """conv_small with a 7-class classifier whose bias makes one class win on every image."""
    torch.manual_seed(0)
    model = mnv4.create_model("conv_small", num_classes=len(FRUIT))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 40.0]))
    return save(model.state_dict(), tmp_path_factory.mktemp("weights") / "fruit.safetensors")


def test_a_checkpoint_loads_with_its_own_number_of_classes(fine_tuned):
    assert mnv4.create_model("conv_small", pretrained=fine_tuned).num_classes == len(FRUIT)
    assert mnv4.create_model("conv_small", pretrained=fine_tuned, num_classes=3).num_classes == 3


def test_export_records_the_classes_and_their_names_and_run_prints_them(fine_tuned, photo_images, tmp_path, cli):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(FRUIT) + "\n")
    artifact = tmp_path / "fruit.onnx"
    result = cli("export", "--format", "onnx", "--weights", fine_tuned, "--labels", labels, "--resolution", RESOLUTION,
                 "--output", artifact, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["num_classes"] == len(FRUIT) and manifest["labels"] == FRUIT
    assert manifest["parity"]["passed"] is True
    Image.fromarray(photo_images["coffee"]).save(tmp_path / "coffee.png")
    result = cli("run", artifact, tmp_path / "coffee.png", "--top", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("1. grape (index 6): ")
    assert cli("verify", artifact).returncode == 0


@pytest.mark.parametrize("names, fragment", [
    (FRUIT[:-1], "names 6 classes; the model has 7"),
    (["apple", "", "cherry"], "empty line 2"),
])
def test_labels_that_do_not_fit_are_refused(names, fragment, fine_tuned, tmp_path, cli):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names))
    output = tmp_path / "out" / "m.onnx"
    result = cli("export", "--format", "onnx", "--weights", fine_tuned, "--labels", labels, "--resolution", RESOLUTION,
                 "--output", output)
    assert_one_line_error(result, fragment)
    assert not output.exists() and not manifest_path(output).exists()


def test_a_classifier_that_fits_no_variant_is_refused(tmp_path, cli):
    state = mnv4.create_model("conv_small").state_dict()
    state["classifier.weight"] = torch.zeros(7, 999)  # conv_small's head gives 1280 features
    checkpoint = save(state, tmp_path / "odd.safetensors")
    output = tmp_path / "out" / "m.onnx"
    result = cli("export", "--format", "onnx", "--weights", checkpoint, "--resolution", RESOLUTION, "--output", output)
    assert_one_line_error(result, "does not fit conv_small", "classifier.weight (7, 999) != (7, 1280)")
    assert not output.exists()
