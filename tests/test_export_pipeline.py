"""`mnv4 export / run / verify` end to end, through ONNX (the quickest format to export): the manifest, `run` and
`verify` on the stored artifact, a verification that can fail (exit code 1), and refusals that leave nothing behind.
The artifact's numbers in onnxruntime are test_onnx's; `--image-input` is test_coreml's; the TFLite fp16 NHWC
export from a fresh process, stdout only JSON, is test_tflite's."""
import hashlib
import json
import sys

import pytest
import torch
from conftest import assert_one_line_error, copy_artifact, manifest_of, rewrite_manifest, seeded
from PIL import Image


@pytest.fixture(scope="module")
def artifact(store):
    return store.get("onnx", dynamic_batch=True)


def test_manifest_records_what_users_need(artifact):
    manifest = manifest_of(artifact)
    assert manifest["variant"] == "conv_small" and manifest["resolution"] == 64
    assert manifest["input_name"] and manifest["input_layout"] == "NCHW" and manifest["input_dtype"] == "float32"
    assert manifest["input_shape"] == [-1, 3, 64, 64] and manifest["batch"] == "dynamic"
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["precision"] == "fp32" and manifest["num_classes"] == 1000
    assert {"torch", "onnx", "mnv4"} <= set(manifest["versions"])
    assert manifest["export_seconds"] > 0 and manifest["bytes"] == artifact.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    weights = manifest["weights"]
    assert weights["kind"] == "seeded-calibrated" and weights["logit_std"] > 1.0
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["inputs"] == {"photos": 9, "random": 2}
    assert set(parity) >= {"batch_1", "batch_4", "worst"}
    assert parity["worst"]["rel_err"] <= 1e-4 and parity["worst"]["top1_agreement"] == 1.0


def test_run_prints_the_artifacts_own_top_k(artifact, tmp_path, photo_images, cli):
    image = tmp_path / "rocket.jpg"
    Image.fromarray(photo_images["rocket"]).save(image)
    result = cli("run", artifact, image, "--top", "2")
    assert result.returncode == 0, result.stderr
    reference = seeded("conv_small")  # the model the artifact was exported from, at its 64 px
    with torch.no_grad():
        logits = reference.model(torch.from_numpy(reference.preprocessing(Image.open(image))[None]))[0]
    top = logits.topk(2).indices.tolist()
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and [f"(index {i})" in line for line, i in zip(lines, top)] == [True, True]


def test_verify_passes_then_fails_with_exit_1_when_the_reference_changes(artifact, tmp_path, cli):
    copy = copy_artifact(artifact, tmp_path)
    result = cli("verify", copy, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True
    # The same artifact judged against other weights (seed 1), rebuilt from the model, must fail, with exit code 1:
    # the FAIL verdict, then one error line.
    rewrite_manifest(copy, lambda manifest: manifest["weights"].update(seed=1))
    result = cli("verify", copy, "--reference", "model")
    assert result.returncode == 1, result.stderr
    verdict, error = result.stderr.strip().splitlines()
    assert "FAIL: relative error" in verdict and "x the limit" in verdict
    assert error == f"error: {copy.name} fails parity"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, fragments", [
    (("--format", "pdf"),
     ("unknown format 'pdf' (choose one of: onnx, tflite, executorch, coreml, ort, openvino, ncnn, all)",)),
    (("--format", "onxx"), ("unknown format 'onxx'; did you mean 'onnx'?",)),
    (("--format", "onnx", "--variant", "conv_xs"), ("unknown variant 'conv_xs'",)),
    (("--format", "onnx", "--nhwc"), ("--nhwc is for tflite and executorch, not onnx",)),  # each option: test_tables
    (("--format", "onnx", "--weights", "nowhere.safetensors"), ("checkpoint not found",)),
])
def test_bad_export_options_leave_nothing_behind(args, fragments, tmp_path, cli):
    output = tmp_path / "model.onnx"
    assert_one_line_error(cli("export", *args, "--resolution", 64, "--output", output), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_missing_backend_names_the_extra(tmp_path, monkeypatch, cli):
    """With onnxscript made unimportable, the export says which extra to install."""
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    result = cli("export", "--format", "onnx", "--resolution", 64, "--output", tmp_path / "m.onnx")
    assert_one_line_error(result, "ONNX export is not installed: pip install 'mnv4[onnx]'")
    assert list(tmp_path.iterdir()) == []
