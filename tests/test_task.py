"""The trained fixture: conv_small and hybrid_medium trained by mnv4 on scikit-learn's digits (offline,
deterministic, cached by the hash of the recipe), and the held-out accuracy that verification adds for models
trained on it: what judges reduced precision, besides closeness to the float32 logits. hybrid_medium's fixture
takes about 90 s to train: what needs it runs with `-m matrix`."""
import json

import numpy as np
import pytest
from conftest import RESOLUTION, manifest_of, trained, trained_model

from mnv4.artifact.parity import MAX_TOP1_LOSS_POINTS, task_record
from mnv4.artifact.reference import TaskReference
from mnv4.data import Preprocessing
from mnv4.model.factory import create_model
from mnv4.model.task import CLASSES, TASK, Recipe, digits, held_out_accuracy, task_of, trained_fixture

VARIANTS = ["conv_small", pytest.param("hybrid_medium", marks=pytest.mark.matrix)]


def check_task_record(task: dict) -> None:
    """A fixture's export judged by its held-out accuracy, and passing."""
    assert task["task"] == TASK and task["held_out"] == 449 and task["passed"] is True
    assert task["top1"]["pytorch_fp32"] >= 0.9 and task["top1_loss_points"] <= MAX_TOP1_LOSS_POINTS
    assert task["max_top1_loss_points"] == MAX_TOP1_LOSS_POINTS and task["top1_agreement_with_fp32"] >= 0.98


def test_the_digits_split_is_fixed_and_disjoint():
    training, held_out = digits(Preprocessing(RESOLUTION, 1.0, "bilinear"))
    again, held_out_again = digits(Preprocessing(RESOLUTION, 1.0, "bilinear"))
    assert np.array_equal(held_out.images, held_out_again.images) and np.array_equal(training.labels, again.labels)
    assert len(training.labels) + len(held_out.labels) == 1797 and len(held_out.labels) == 449
    assert set(held_out.labels) == set(range(CLASSES)) and training.images.shape[1:] == (3, RESOLUTION, RESOLUTION)
    flattened = {row.tobytes() for row in training.images}
    assert not any(row.tobytes() in flattened for row in held_out.images)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_fixture_learns_the_digits_and_is_cached(variant):
    path = trained(variant)
    assert task_of(path) == "digits" and held_out_accuracy(path) >= 0.9
    assert trained_fixture(variant) == path  # the cache: no second training
    assert Recipe(variant).key() in path.name and Recipe(variant, epochs=7).key() != Recipe(variant).key()
    assert create_model(variant, pretrained=path).num_classes == CLASSES


def test_an_fp16_export_of_the_fixture_is_judged_by_its_accuracy_too(store):
    manifest = manifest_of(store.get("onnx", fixture=True, precision="fp16", batch=2))
    assert manifest["precision"] == "fp16" and manifest["parity"]["passed"] is True
    check_task_record(manifest["parity"]["task"])


@pytest.mark.matrix
@pytest.mark.parametrize("variant, fmt", [("conv_small", "executorch"), ("hybrid_medium", "onnx")])
def test_fp16_exports_of_the_executorch_and_hybrid_fixtures_are_judged_by_their_accuracy(variant, fmt, cli, tmp_path):
    """ExecuTorch (no fixture fp16 in the store's catalogue) and the hybrid (its fixture trains for 90 s), as
    `mnv4 export --json` prints them."""
    artifact = tmp_path / f"m{'.pte' if fmt == 'executorch' else '.onnx'}"
    result = cli("export", "--format", fmt, "--variant", variant, "--weights", trained(variant), "--resolution",
                 RESOLUTION, "--precision", "fp16", "--output", artifact, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    check_task_record(json.loads(result.stdout)["parity"]["task"])


def test_an_artifact_that_loses_accuracy_fails_with_the_numbers():
    fixture = trained_model("conv_small")
    held_out = fixture.held_out
    guessing = np.zeros((len(held_out.labels), CLASSES), np.float32)
    guessing[:, 0] = 1  # "0" for every digit: right on a tenth of them
    record = task_record(guessing, TaskReference(TASK, held_out.images, held_out.labels, fixture.logits))
    assert record["passed"] is False and record["top1_loss_points"] > 50
    assert record["top1"] == {"artifact": pytest.approx(0.1, abs=0.03), "pytorch_fp32": fixture.top1}
    assert "points lost > 1" in record["failure"] and "PyTorch float32's" in record["failure"]
    # The same logits as PyTorch float32's lose nothing.
    assert task_record(fixture.logits, TaskReference(TASK, held_out.images, held_out.labels, fixture.logits))[
        "passed"] is True


def test_the_fixture_command_prints_the_cached_checkpoint(cli):
    result = cli("fixture", "--variant", "conv_small")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{trained('conv_small')}  (held-out top-1 ")


@pytest.mark.matrix
def test_bench_rows_of_the_fixture_carry_its_accuracy_and_int8_its_speed_up(cli, tmp_path):
    """In the matrix while the bench round trip is redesigned in tests/test_bench.py."""
    result = cli("bench", "--variant", "conv_small", "--formats", "tflite", "--precisions", "fp32,int8", "--weights",
                 trained("conv_small"), "--resolution", RESOLUTION, "--iterations", "5", "--warmup", "1",
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


def test_at_another_resolution_the_accuracy_is_not_measured_and_says_why(cli, tmp_path):
    result = cli("export", "--format", "onnx", "--weights", trained("conv_small"), "--resolution", "96",
                 "--output", tmp_path / "m.onnx", "--json")
    assert result.returncode == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["passed"] is True and parity["task"]["passed"] is None
    assert parity["task"]["status"] == "not measured: the fixture was trained at 64 px and the artifact takes 96 px"
    assert "digits accuracy not measured: the fixture was trained at 64 px" in result.stderr
    assert manifest_of(tmp_path / "m.onnx")["parity"]["task"] == parity["task"]
    # Verified again from the stored reference, which keeps the reason.
    again = cli("verify", tmp_path / "m.onnx", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["task"] == parity["task"] and "digits accuracy not measured" in again.stderr


def test_training_is_deterministic(tmp_path, monkeypatch):
    """Two trainings of one recipe give the same weights, bit for bit (one epoch, to keep it short)."""
    import torch
    from safetensors.torch import load_file

    recipe = Recipe("conv_small", epochs=1)
    paths = []
    # One thread: on a busy 2-core machine (pytest -n 2) two threads a process make training ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run in ("first", "second"):
            monkeypatch.setenv("MNV4_CACHE", str(tmp_path / run))
            paths.append(trained_fixture("conv_small", recipe))
    finally:
        torch.set_num_threads(threads)
    assert paths[0] != paths[1]  # two caches: trained twice
    first, second = (load_file(str(path)) for path in paths)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
