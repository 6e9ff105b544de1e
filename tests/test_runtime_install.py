"""The runtime-only install (`mnv4[runtime]`: no PyTorch, no toolchains): each export stores its reference beside
its manifest, and `mnv4 verify`, `run`, `bench --artifacts` and `report` work from it with PyTorch and every other
package of the full install made unimportable (tests/without_torch.py), reaching the verdict the model itself
reaches."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, run_cli

from mnv4.artifact.files import sha256
from mnv4.artifact.manifest import manifest_path, read_manifest
from mnv4.artifact.parity import verification_inputs
from mnv4.artifact.reference import Reference, read_reference, reference_path
from mnv4.export import ExportRequest, export
from mnv4.model.task import trained_fixture

WITHOUT_TORCH = Path(__file__).with_name("without_torch.py")
RESOLUTION = 64


def run_without_torch(*args):
    return subprocess.run([sys.executable, str(WITHOUT_TORCH), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Seeded conv_small as ONNX fp32 and TFLite fp16, and the trained fixture as ONNX int8 (whose reference holds
    the held-out digits), each in a folder of its own model."""
    seeded, trained = tmp_path_factory.mktemp("seeded"), tmp_path_factory.mktemp("trained")
    found = {}
    for name, folder, fmt, weights, precision in (
            ("onnx", seeded, "onnx", None, "fp32"), ("tflite_fp16", seeded, "tflite", None, "fp16"),
            ("fixture_int8", trained, "onnx", trained_fixture("conv_small"), "int8")):
        path = folder / f"{name}{'.onnx' if fmt == 'onnx' else '.tflite'}"
        export(fmt, ExportRequest("conv_small", weights=weights, resolution=RESOLUTION, precision=precision), path)
        found[name] = path
    return found


def test_every_verified_export_stores_its_reference_and_size_beside_the_manifest(artifacts):
    for path in artifacts.values():
        manifest = json.loads(manifest_path(path).read_text())
        assert manifest["reference"]["sha256"] == sha256(reference_path(path))
        assert manifest["reference"]["inputs"] == {"photos": 9, "random": 2}
        assert manifest["model"]["macs"] > 0 and manifest["model"]["params"] > 0
    assert json.loads(manifest_path(artifacts["fixture_int8"]).read_text())["reference"]["task"] == "digits"


@pytest.mark.parametrize("name", ["onnx", "tflite_fp16", "fixture_int8"])
def test_verify_without_torch_gives_the_verdict_of_the_model_itself(artifacts, name):
    without = run_without_torch("verify", artifacts[name], "--json")
    assert without.returncode == 0, without.stderr
    rebuilt = run_cli("verify", artifacts[name], "--reference", "model", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    stored, from_model = json.loads(without.stdout), json.loads(rebuilt.stdout)
    assert stored.pop("reference_source") == "stored beside the manifest"
    assert from_model.pop("reference_source") == "rebuilt from the model"
    assert stored == from_model and stored["passed"] is True
    if name == "fixture_int8":
        assert stored["task"]["task"] == "digits" and stored["task"]["held_out"] == 449


def test_verify_without_torch_fails_an_artifact_that_computes_something_else(artifacts, tmp_path):
    # Judged by the reference of another model (its logits' classes rotated): exit 1, with the numbers.
    impostor = _copy(artifacts["onnx"], tmp_path)
    stored = read_reference(impostor, read_manifest(impostor).reference)
    other = Reference(stored.inputs, stored.photos, np.roll(stored.pytorch_fp32, 1, axis=1),
                      np.roll(stored.float64, 1, axis=1))
    other.write(impostor)
    manifest = json.loads(manifest_path(impostor).read_text())
    manifest["reference"]["sha256"] = sha256(reference_path(impostor))
    manifest_path(impostor).write_text(json.dumps(manifest))
    result = run_without_torch("verify", impostor)
    assert result.returncode == 1, result.stderr
    assert "FAIL: relative error" in result.stderr and "against float64" in result.stderr


def test_an_artifact_of_other_classes_than_its_reference_is_refused(artifacts, tmp_path):
    impostor = _copy(artifacts["onnx"], tmp_path)
    shutil.copy(manifest_path(artifacts["fixture_int8"]), manifest_path(impostor))
    shutil.copy(reference_path(artifacts["fixture_int8"]), reference_path(impostor))
    assert_one_line_error(run_without_torch("verify", impostor), "gives 1000 logits per image where its reference has 10")


def _copy(artifact: Path, folder: Path, reference: bool = True) -> Path:
    copy = folder / artifact.name
    shutil.copy(artifact, copy)
    shutil.copy(manifest_path(artifact), manifest_path(copy))
    if reference:
        shutil.copy(reference_path(artifact), reference_path(copy))
    return copy


def test_verify_without_torch_refuses_a_missing_foreign_or_absent_reference(artifacts, tmp_path):
    missing = _copy(artifacts["onnx"], tmp_path, reference=False)
    assert_one_line_error(run_without_torch("verify", missing), "stored reference", "is missing",
                          "copy it with the artifact and its manifest")
    reference_path(missing).write_bytes(reference_path(artifacts["fixture_int8"]).read_bytes())
    assert_one_line_error(run_without_torch("verify", missing), "not the reference exported with", "sha256")
    manifest = json.loads(manifest_path(missing).read_text())
    manifest["reference"] = None  # as --no-verify exports it
    manifest_path(missing).write_text(json.dumps(manifest))
    assert_one_line_error(run_without_torch("verify", missing), "has no stored reference", "mnv4[torch]")
    assert_one_line_error(run_without_torch("verify", artifacts["onnx"], "--reference", "model"),
                          "PyTorch", "is not installed", "mnv4[torch]")


@pytest.mark.parametrize("args, fragments", [
    (("export", "--format", "onnx"), ("PyTorch", "`mnv4 export`", "mnv4[torch]")),
    (("bench", "--formats", "onnx"), ("PyTorch", "`mnv4 bench` without --artifacts", "mnv4[torch]")),
    (("info", "--variant", "conv_small"), ("PyTorch", "`mnv4 info`")),
])
def test_what_needs_the_model_says_so_in_one_line_without_torch(args, fragments):
    assert_one_line_error(run_without_torch(*args), *fragments)


def test_bench_options_of_the_other_kind_are_refused(artifacts):
    assert_one_line_error(run_cli("bench", "--artifacts", artifacts["onnx"], "--formats", "onnx"),
                          "--formats do not go with --artifacts")
    assert_one_line_error(run_cli("bench", "--xnnpack-fp16"), "--xnnpack-fp16 go with --artifacts")
    assert_one_line_error(run_cli("verify", artifacts["onnx"], "--xnnpack-fp16"),
                          "--xnnpack-fp16 is not an option for onnx.onnx")


def test_run_without_torch_prints_the_artifacts_own_classes(artifacts, tmp_path, photo_images):
    image = tmp_path / "coffee.png"
    Image.fromarray(photo_images["coffee"]).save(image)
    without = run_without_torch("run", artifacts["onnx"], image, "--top", "3")
    assert without.returncode == 0, without.stderr
    assert without.stdout == run_cli("run", artifacts["onnx"], image, "--top", "3").stdout
    assert len(without.stdout.splitlines()) == 3


def test_bench_artifacts_without_torch_measures_judges_and_reports(artifacts, tmp_path):
    output = tmp_path / "bench"
    result = run_without_torch("bench", "--artifacts", artifacts["onnx"].parent, "--output-dir", output,
                               "--warmup", "1", "--iterations", "5", "--machine-name", "runtime-only")
    assert result.returncode == 0, result.stderr
    results = json.loads((output / "results.json").read_text())
    assert results["machine"]["id"] == "runtime-only" and results["model"]["macs"] > 0
    rows = {(row["format"], row["precision"]): row for row in results["rows"]}
    assert set(rows) == {("onnx", "fp32"), ("tflite", "fp16")}
    for row in rows.values():
        assert row["status"] == "ok" and row["parity"]["passed"] is True, row
        assert row["latency_ms"]["iterations"] == 5 and row["gflops"] > 0
    # The bound: a torch-free ONNX Runtime row of conv_small (here at 64 px) in at most 150 MB.
    assert rows["onnx", "fp32"]["peak_rss_mb"] <= 150
    # No matplotlib on the runtime install: the report is written, its plots named and not drawn.
    html = (output / "report.html").read_text()
    assert "not drawn: matplotlib is not installed" in html and "runtime-only" in html
    merged = run_without_torch("report", output / "results.json", "--output-dir", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr


def test_bench_artifacts_refuses_folders_it_cannot_make_one_results_file_of(artifacts, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("onnx", "fixture_int8"):
        _copy(artifacts[name], mixed)
    assert_one_line_error(run_cli("bench", "--artifacts", mixed), "are of 2 models", "bench each model's folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("bench", "--artifacts", tmp_path / "empty"), "no artifacts with manifests")
    bare = tmp_path / "bare"
    bare.mkdir()
    _copy(artifacts["onnx"], bare, reference=False)
    assert_one_line_error(run_without_torch("bench", "--artifacts", bare), "stored reference", "is missing")


def test_the_stored_inputs_are_the_verification_inputs(artifacts):
    from mnv4.artifact.manifest import read_manifest
    from mnv4.artifact.reference import read_reference

    path = artifacts["onnx"]
    reference = read_reference(path, read_manifest(path).reference)
    assert np.array_equal(reference.inputs, verification_inputs(read_manifest(path).preprocessing_spec()))
    assert reference.float64.dtype == np.float64 and reference.pytorch_fp32.dtype == np.float32
