"""The runtime-only install (`mnv4[runtime]`: no PyTorch, no toolchains): each export stores its reference beside
its manifest, and `mnv4 verify`, `run`, `bench-artifacts` and `report` work from it with PyTorch and every other
package of the full install made unimportable (tests/without_torch.py, a fresh process: that is the point),
reaching the verdict the model itself reaches (`mnv4` in this process, which has PyTorch)."""
import json
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, copy_artifact, manifest_of, rewrite_manifest, run_without_torch
from PIL import Image

from mnv4.artifact.files import sha256
from mnv4.artifact.manifest import manifest_path, read_manifest
from mnv4.artifact.parity import verification_inputs
from mnv4.artifact.reference import Reference, read_reference, reference_path


@pytest.fixture(scope="module")
def artifacts(store):
    """Seeded conv_small as ONNX fp32 and TFLite fp16 (NHWC, exported by a fresh `mnv4 export`), and the trained
    fixture as ONNX int8 (whose reference holds the held-out digits); all three with dynamic batch."""
    return {"onnx": store.get("onnx", dynamic_batch=True),
            "tflite_fp16": store.get("tflite", precision="fp16", nhwc=True, dynamic_batch=True, cli=True),
            "fixture_int8": store.get("onnx", fixture=True, precision="int8", dynamic_batch=True)}


def test_every_verified_export_stores_its_reference_and_size_beside_the_manifest(artifacts):
    for path in artifacts.values():
        manifest = manifest_of(path)
        assert manifest["reference"]["sha256"] == sha256(reference_path(path))
        assert manifest["reference"]["file"] == reference_path(path).name
        assert manifest["reference"]["inputs"] == {"photos": 9, "random": 2}
        assert manifest["model"]["macs"] > 0 and manifest["model"]["params"] > 0
    assert manifest_of(artifacts["fixture_int8"])["reference"]["task"] == "digits"
    assert manifest_of(artifacts["onnx"])["reference"]["task"] is None


def test_the_stored_inputs_are_the_verification_inputs(artifacts):
    path = artifacts["onnx"]
    manifest = read_manifest(path)
    reference = read_reference(path, manifest)
    assert np.array_equal(reference.inputs, verification_inputs(manifest.preprocessing_spec()))
    assert reference.float64.dtype == np.float64 and reference.pytorch_fp32.dtype == np.float32
    assert reference.photos == 9 and reference.task is None


@pytest.mark.parametrize("name", ["onnx", "tflite_fp16", "fixture_int8"])
def test_verify_without_torch_gives_the_verdict_of_the_model_itself(artifacts, name, cli):
    without = run_without_torch("verify", artifacts[name], "--json")
    assert without.returncode == 0, without.stderr
    rebuilt = cli("verify", artifacts[name], "--reference", "model", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    stored, from_model = json.loads(without.stdout), json.loads(rebuilt.stdout)
    assert stored.pop("reference_source") == "stored beside the manifest"
    assert from_model.pop("reference_source") == "rebuilt from the model"
    assert stored == from_model and stored["passed"] is True
    if name == "fixture_int8":
        assert stored["task"]["task"] == "digits" and stored["task"]["held_out"] == 449


def test_verify_without_torch_fails_an_artifact_that_computes_something_else(artifacts, tmp_path):
    # Judged by the reference of another model (its logits' classes rotated): exit 1, with the numbers.
    impostor = copy_artifact(artifacts["onnx"], tmp_path)
    stored = read_reference(impostor, read_manifest(impostor))
    other = Reference(stored.inputs, stored.photos, np.roll(stored.pytorch_fp32, 1, axis=1),
                      np.roll(stored.float64, 1, axis=1))
    other.write(impostor)
    rewrite_manifest(impostor, lambda manifest: manifest["reference"].update(sha256=sha256(reference_path(impostor))))
    result = run_without_torch("verify", impostor)
    assert result.returncode == 1, result.stderr
    summary, error = result.stderr.strip().splitlines()[-2:]
    assert "FAIL: relative error" in summary and "against float64" in summary
    assert error == f"error: {impostor.name} fails parity"
    assert "Traceback" not in result.stderr


def test_an_artifact_of_other_classes_than_its_reference_is_refused(artifacts, tmp_path):
    impostor = copy_artifact(artifacts["onnx"], tmp_path)
    shutil.copy(manifest_path(artifacts["fixture_int8"]), manifest_path(impostor))
    shutil.copy(reference_path(artifacts["fixture_int8"]), reference_path(impostor))
    rewrite_manifest(impostor, lambda manifest: manifest.update(sha256=sha256(impostor)))  # past the file check
    assert_one_line_error(run_without_torch("verify", impostor), "gives 1000 logits per image where its reference has 10")


def test_verify_without_torch_refuses_a_missing_foreign_or_absent_reference(artifacts, tmp_path):
    missing = copy_artifact(artifacts["onnx"], tmp_path, reference=False)
    assert_one_line_error(run_without_torch("verify", missing), "stored reference", "is missing",
                          "copy it with the artifact and its manifest")
    reference_path(missing).write_bytes(reference_path(artifacts["fixture_int8"]).read_bytes())
    assert_one_line_error(run_without_torch("verify", missing), "not the reference exported with", "sha256")
    rewrite_manifest(missing, lambda manifest: manifest.update(reference=None))  # as --no-verify exports it
    assert_one_line_error(run_without_torch("verify", missing), "has no stored reference", "mnv4[torch]")
    assert_one_line_error(run_without_torch("verify", artifacts["onnx"], "--reference", "model"),
                          "PyTorch", "is not installed", "mnv4[torch]")


@pytest.mark.parametrize("args, fragments", [
    (("export", "--format", "onnx"), ("PyTorch, which `mnv4 export` needs, is not installed", "mnv4[torch]")),
    (("bench", "--formats", "onnx"), ("PyTorch, which `mnv4 bench` needs, is not installed", "mnv4[torch]",
                                      "`mnv4 bench-artifacts`, which needs none")),
    (("info", "--variant", "conv_small"), ("PyTorch, which `mnv4 info` needs, is not installed", "mnv4[torch]")),
])
def test_what_needs_the_model_says_so_in_one_line_without_torch(args, fragments):
    assert_one_line_error(run_without_torch(*args), *fragments)


def test_bench_options_of_the_other_kind_are_refused(artifacts, cli):
    assert_one_line_error(cli("bench", "--artifacts", artifacts["onnx"], "--formats", "onnx", "--resolution", "96"),
                          "--formats, --resolution do not go with bench-artifacts")
    assert_one_line_error(cli("bench", "--xnnpack-fp16"), "--xnnpack-fp16 go with `mnv4 bench-artifacts PATHS`")
    assert_one_line_error(cli("bench", "--machine-name", "box"), "--machine-name go with `mnv4 bench-artifacts PATHS`")
    assert_one_line_error(cli("bench-artifacts", artifacts["onnx"], "--formats", "onnx"), "No such option: --formats")
    assert_one_line_error(cli("verify", artifacts["onnx"], "--xnnpack-fp16"),
                          "--xnnpack-fp16 is not an option for onnx.onnx")


def test_run_without_torch_prints_the_artifacts_own_classes(artifacts, tmp_path, photo_images, cli):
    image = tmp_path / "coffee.png"
    Image.fromarray(photo_images["coffee"]).save(image)
    without = run_without_torch("run", artifacts["onnx"], image, "--top", "3")
    assert without.returncode == 0, without.stderr
    assert without.stdout == cli("run", artifacts["onnx"], image, "--top", "3").stdout
    assert len(without.stdout.splitlines()) == 3


def test_bench_artifacts_without_torch_measures_judges_and_reports(artifacts, tmp_path):
    folder = tmp_path / "artifacts"  # the store keeps each artifact in a folder of its own
    for name in ("onnx", "tflite_fp16"):
        copy_artifact(artifacts[name], folder)
    output = tmp_path / "bench"
    result = run_without_torch("bench-artifacts", folder, "--output-dir", output, "--warmup", "1", "--iterations", "5",
                               "--machine-name", "runtime-only")
    assert result.returncode == 0, result.stderr
    results = json.loads((output / "results.json").read_text())
    assert results["machine"]["id"] == "runtime-only" and results["model"]["macs"] > 0
    assert results["options"]["artifacts"] == ["onnx.onnx", "tflite.tflite"]
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
    assert "runtime-only" in (tmp_path / "merged" / "report.md").read_text()


def test_the_older_spelling_bench_artifacts_still_measures(artifacts, tmp_path, cli):
    """`mnv4 bench --artifacts PATH` is `mnv4 bench-artifacts PATH`, its measuring options passed on."""
    output = tmp_path / "bench"
    result = cli("bench", "--artifacts", artifacts["onnx"], "--output-dir", output, "--warmup", "0", "--iterations",
                 "2", "--threads", "2", "--machine-name", "older-spelling")
    assert result.returncode == 0, result.stderr
    results = json.loads((output / "results.json").read_text())
    assert results["machine"]["id"] == "older-spelling" and results["options"]["artifacts"] == ["onnx.onnx"]
    (row,) = results["rows"]
    assert (row["format"], row["precision"], row["threads"]) == ("onnx", "fp32", 2)
    assert row["status"] == "ok" and row["latency_ms"]["iterations"] == 2


def test_bench_artifacts_refuses_what_it_cannot_make_one_results_file_of(artifacts, tmp_path, cli):
    mixed = tmp_path / "mixed"
    for name in ("tflite_fp16", "fixture_int8"):  # seeded weights, and the trained fixture's
        copy_artifact(artifacts[name], mixed)
    assert_one_line_error(cli("bench-artifacts", mixed, "--output-dir", tmp_path / "out"), "are of 2 models",
                          "bench each model's folder")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("bench-artifacts", tmp_path / "empty"), "no artifacts with manifests")
    assert_one_line_error(cli("bench-artifacts", tmp_path / "absent"), f"not found: {tmp_path / 'absent'}")
    bare = tmp_path / "bare"
    copy_artifact(artifacts["onnx"], bare, reference=False)
    assert_one_line_error(run_without_torch("bench-artifacts", bare), "stored reference", "is missing")
