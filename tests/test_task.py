"""The trained fixture: conv_small and hybrid_medium trained by mnv4 on scikit-learn's digits (offline,
deterministic, cached by the hash of the recipe), and the held-out accuracy that verification adds for models
trained on it: what judges reduced precision, besides closeness to the float32 logits."""
import json

import numpy as np
import pytest
from test_cli import run_cli

from mnv4.artifact.parity import MAX_TOP1_LOSS_POINTS, task_record
from mnv4.artifact.reference import TaskReference
from mnv4.data import Preprocessing
from mnv4.model.factory import create_model
from mnv4.model.task import CLASSES, TASK, Recipe, digits, held_out_accuracy, predict, task_of, trained_fixture

VARIANTS = ("conv_small", "hybrid_medium")


@pytest.fixture(scope="session")
def fixtures():
    return {variant: trained_fixture(variant) for variant in VARIANTS}


def test_the_digits_split_is_fixed_and_disjoint():
    training, held_out = digits(Preprocessing(64, 1.0, "bilinear"))
    again, held_out_again = digits(Preprocessing(64, 1.0, "bilinear"))
    assert np.array_equal(held_out.images, held_out_again.images) and np.array_equal(training.labels, again.labels)
    assert len(training.labels) + len(held_out.labels) == 1797 and len(held_out.labels) == 449
    assert set(held_out.labels) == set(range(CLASSES)) and training.images.shape[1:] == (3, 64, 64)
    flattened = {row.tobytes() for row in training.images}
    assert not any(row.tobytes() in flattened for row in held_out.images)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_fixture_learns_the_digits_and_is_cached(variant, fixtures):
    path = fixtures[variant]
    assert task_of(path) == "digits" and held_out_accuracy(path) >= 0.9
    assert trained_fixture(variant) == path  # the cache: no second training
    assert Recipe(variant).key() in path.name and Recipe(variant, epochs=7).key() != Recipe(variant).key()
    assert create_model(variant, pretrained=path).num_classes == CLASSES


@pytest.mark.parametrize("variant, fmt", [("conv_small", "executorch"), ("hybrid_medium", "onnx")])
def test_an_fp16_export_of_the_fixture_is_judged_by_its_accuracy_too(variant, fmt, fixtures, tmp_path):
    artifact = tmp_path / f"m{'.pte' if fmt == 'executorch' else '.onnx'}"
    result = run_cli("export", "--format", fmt, "--variant", variant, "--weights", fixtures[variant], "--resolution",
                     "64", "--precision", "fp16", "--output", artifact, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)["parity"]["task"]
    assert task["task"] == "digits" and task["held_out"] == 449 and task["passed"] is True
    assert task["top1"]["pytorch_fp32"] >= 0.9 and task["top1_loss_points"] <= MAX_TOP1_LOSS_POINTS
    assert task["top1_agreement_with_fp32"] >= 0.98


def test_an_artifact_that_loses_accuracy_fails_with_the_numbers(fixtures):
    model = create_model("conv_small", pretrained=fixtures["conv_small"])
    preprocessing = model.preprocessing.at(64)

    _, held_out = digits(preprocessing)
    guessing = np.zeros((len(held_out.labels), CLASSES), np.float32)
    guessing[:, 0] = 1  # "0" for every digit: right on a tenth of them
    record = task_record(guessing, TaskReference(TASK, held_out.images, held_out.labels, predict(model, held_out.images)))
    assert record["passed"] is False and record["top1_loss_points"] > 50
    assert "points lost > 1" in record["failure"] and "PyTorch float32's" in record["failure"]


def test_the_fixture_command_prints_the_cached_checkpoint(fixtures):
    result = run_cli("fixture", "--variant", "conv_small")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{fixtures['conv_small']}  (held-out top-1 ")


def test_bench_rows_of_the_fixture_carry_its_accuracy_and_int8_its_speed_up(fixtures, tmp_path):
    result = run_cli("bench", "--variant", "conv_small", "--formats", "tflite", "--precisions", "fp32,int8", "--weights",
                     fixtures["conv_small"], "--resolution", "64", "--iterations", "5", "--warmup", "1",
                     "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    fp32, int8 = json.loads((tmp_path / "results.json").read_text())["rows"]
    for row in fp32, int8:
        task = row["parity"]["task"]
        assert row["status"] == "ok" and task["held_out"] == 449 and task["passed"] is True
        assert task["top1"]["artifact"] >= 0.9 and task["top1_agreement_with_fp32"] >= 0.98
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8") and int8["parity"]["tolerance"] == "int8"
    # The speed-up is the two medians of this run (no claim about its size: that is the benchmark's).
    assert fp32["speedup_vs_fp32"] is None
    assert int8["speedup_vs_fp32"] == pytest.approx(fp32["latency_ms"]["median"] / int8["latency_ms"]["median"])
    assert "vs fp32" in (tmp_path / "report.md").read_text()


def test_at_another_resolution_the_accuracy_is_not_measured_and_says_why(fixtures, tmp_path):
    result = run_cli("export", "--format", "onnx", "--weights", fixtures["conv_small"], "--resolution", "96",
                     "--output", tmp_path / "m.onnx", "--json")
    assert result.returncode == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["passed"] is True and parity["task"]["passed"] is None
    assert parity["task"]["status"] == "not measured: the fixture was trained at 64 px and the artifact takes 96 px"
    assert "digits accuracy not measured" in result.stderr


def test_training_is_deterministic(tmp_path, monkeypatch):
    """Two trainings of one recipe give the same weights, bit for bit (one epoch, to keep it short)."""
    import torch
    from safetensors.torch import load_file

    recipe = Recipe("conv_small", epochs=1)
    paths = []
    for run in ("first", "second"):
        monkeypatch.setenv("MNV4_CACHE", str(tmp_path / run))
        paths.append(trained_fixture("conv_small", recipe))
    first, second = (load_file(str(path)) for path in paths)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
