"""`mnv4 export / run / verify` end to end, through ONNX (the quickest format to export):
manifest, atomic output, refusals, and a verification that can fail."""
import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, run_cli

from mnv4.artifact.manifest import manifest_path
from mnv4.export import reference_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    artifact = folder / "small.onnx"
    result = run_cli("export", "--format", "onnx", "--variant", "conv_small", "--dynamic-batch",
                     "--output", artifact, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    return artifact, json.loads(result.stdout)


def test_manifest_records_what_users_need(exported):
    artifact, printed = exported
    manifest = json.loads(manifest_path(artifact).read_text())
    assert manifest == printed
    assert manifest["variant"] == "conv_small" and manifest["resolution"] == 224
    assert manifest["input_name"] and manifest["input_layout"] == "NCHW" and manifest["input_dtype"] == "float32"
    assert manifest["input_shape"] == [-1, 3, 224, 224] and manifest["batch"] == "dynamic"
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["precision"] == "fp32" and manifest["num_classes"] == 1000
    assert {"torch", "onnx", "mnv4"} <= set(manifest["versions"])
    assert manifest["export_seconds"] > 0 and manifest["bytes"] == artifact.stat().st_size
    import hashlib
    assert manifest["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    weights = manifest["weights"]
    assert weights["kind"] == "seeded-calibrated" and weights["logit_std"] > 1.0
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["inputs"] == {"photos": 9, "random": 2}
    assert set(parity) >= {"batch_1", "batch_4", "worst"}
    assert parity["worst"]["rel_err"] <= 1e-4 and parity["worst"]["top1_agreement"] == 1.0


def test_artifact_is_an_ordinary_onnx_file_matching_pytorch(exported):
    artifact, manifest = exported
    model, preprocessing, _ = reference_model("conv_small", None, 224)
    from mnv4.data import photo_batch
    photos = photo_batch(preprocessing)
    session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {manifest["input_name"]: photos})
    with torch.no_grad():
        expected = model(torch.from_numpy(photos)).numpy()
    assert np.abs(actual - expected).max() / np.abs(expected).max() <= 1e-4


def test_run_prints_the_artifacts_own_top_k(exported, tmp_path, photo_images):
    artifact, _ = exported
    image = tmp_path / "rocket.jpg"
    Image.fromarray(photo_images["rocket"]).save(image)
    result = run_cli("run", artifact, image, "--top", "2")
    assert result.returncode == 0, result.stderr
    model, preprocessing, _ = reference_model("conv_small", None, 224)
    with torch.no_grad():
        top = model(torch.from_numpy(preprocessing(Image.open(image))[None]))[0].topk(2).indices.tolist()
    assert [f"(index {i})" in line for line, i in zip(result.stdout.splitlines(), top)] == [True, True]


def test_verify_passes_then_fails_when_the_reference_changes(exported, tmp_path):
    artifact, _ = exported
    result = run_cli("verify", artifact, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True
    # The same artifact judged against other weights (seed 1), rebuilt from the model, must fail, with exit code 1.
    copy = tmp_path / artifact.name
    copy.write_bytes(artifact.read_bytes())
    manifest = json.loads(manifest_path(artifact).read_text())
    manifest["weights"]["seed"] = 1
    manifest_path(copy).write_text(json.dumps(manifest))
    result = run_cli("verify", copy, "--reference", "model")
    assert result.returncode == 1
    assert "FAIL: relative error" in result.stderr and "x the limit" in result.stderr


def test_existing_output_needs_force(exported):
    artifact, _ = exported
    assert_one_line_error(run_cli("export", "--format", "onnx", "--output", artifact), "exists; pass --force")


@pytest.mark.parametrize("args, fragments", [
    (("--format", "pdf"), ("unknown format 'pdf'", "onnx, tflite, executorch, coreml, all")),
    (("--format", "onnx", "--variant", "conv_xs"), ("unknown variant 'conv_xs'",)),
    (("--format", "onnx", "--nhwc"), ("--nhwc", "NCHW")),
    (("--format", "onnx", "--image-input"), ("--image-input is only for Core ML",)),
    (("--format", "onnx", "--precision", "int3"), ("unknown precision 'int3'",)),
    (("--format", "onnx", "--weights", "nowhere.safetensors"), ("checkpoint not found",)),
])
def test_bad_export_options_leave_nothing_behind(args, fragments, tmp_path):
    output = tmp_path / "model.onnx"
    result = run_cli("export", *args, "--output", output)
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_coreml_image_input_from_the_command_line(tmp_path):
    """`--image-input` gives a Core ML image input whose folded normalisation is the variant's own, and the
    export proves it computes what the model computes on the normalised photos."""
    output = tmp_path / "model.mlpackage"
    result = run_cli("export", "--format", "coreml", "--image-input", "--output", output, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["input_kind"] == "image" and manifest["input_dtype"] == "uint8"
    std = np.asarray(manifest["preprocessing"]["std"])
    gain = np.asarray(manifest["image_normalisation"]["channel_gain"])
    assert np.allclose(gain * std, std.mean())  # the gain restores each channel's own std
    # Verified on the pixels the photos came from, through the image input's scale and bias and the gain.
    assert manifest["parity"]["passed"] is True and manifest["parity"]["worst"]["rel_err"] <= 1e-4
    assert output.is_dir() and manifest_path(output).exists()


def test_missing_backend_names_the_extra(tmp_path):
    """With onnxscript made unimportable (a stand-in package that raises ImportError), the export says
    which extra to install."""
    blocker = tmp_path / "blocked" / "onnxscript"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('onnxscript is not installed')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(blocker.parent)}
    result = subprocess.run([sys.executable, "-m", "mnv4", "export", "--format", "onnx", "--output",
                             str(tmp_path / "m.onnx")], capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(result, "pip install 'mnv4[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_tflite_dynamic_batch_fp16_nhwc_is_verified_at_two_batches(tmp_path):
    """Also proves that stdout holds only the JSON and stderr only mnv4's summary: litert-torch,
    ai-edge-quantizer, absl, oneDNN and XNNPACK print progress and notices of their own."""
    artifact = tmp_path / "small.tflite"
    result = run_cli("export", "--format", "tflite", "--variant", "conv_small", "--dynamic-batch", "--nhwc",
                     "--precision", "fp16", "--output", artifact, "--json")
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()
    assert len(summary) == 2, result.stderr
    assert summary[0].startswith("wrote small.tflite (") and "PASS" in summary[1]
    manifest = json.loads(result.stdout)
    assert manifest["input_shape"] == [-1, 224, 224, 3] and manifest["batch"] == "dynamic"
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["tolerance"] == "fp16"
    assert {"batch_1", "batch_4"} <= set(parity)
    assert parity["batch_4"]["all"]["cosine"] >= 0.999

    # The interpreter's own notice (XNNPACK delegate created) only with --verbose.
    quiet, verbose = run_cli("verify", artifact), run_cli("verify", artifact, "--verbose")
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "XNNPACK" in verbose.stderr and "XNNPACK" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1 and "PASS" in quiet.stderr
