"""Parity is judged against the truth, the model in float64: an artifact as accurate as PyTorch float32 passes
even where float32 itself is far from float64 (an ill-conditioned checkpoint or input), and an artifact whose
weights were altered by 0.1 % still fails, in ONNX and TFLite, with `mnv4 verify`'s exit code 1."""
import json

import numpy as np
import pytest
import torch
from conftest import altered_onnx, altered_tflite, assert_one_line_error, copy_artifact, randomise_weights
from safetensors.torch import save_file

import mnv4
from mnv4.artifact.files import sha256
from mnv4.artifact.manifest import manifest_path
from mnv4.artifact.parity import TRUTH_FACTOR, truth_breaches
from mnv4.artifact.precisions import FP32
from mnv4.data import photo_batch
from mnv4.model.weights import calibrate_batch_norm

# hybrid_medium's own resolution, which this test needs: there PyTorch float32 is some 1600x to 3500x the fp32
# limit from float64, and an ONNX export's worst error 0.8x to 1.3x float32's (6 checkpoints of 6 passed). At 64 px
# float32 is only 1.3x to 4x the limit (no ill-conditioning to show); at 128 px it is 500x to 2000x, but on a
# random-pixel input onnxruntime's error was up to 10x float32's (beyond TRUTH_FACTOR) in 3 checkpoints of 6.
ILL_CONDITIONED_RESOLUTION = 256


@pytest.fixture(scope="module")
def ill_conditioned_checkpoint(tmp_path_factory):
    """hybrid_medium in timm's layout with BatchNorm affine parameters and layer scales at random and
    BatchNorm statistics measured on photos at the export's resolution: legitimate weights on which PyTorch
    float32 is far from float64 (docs/export.md, "The truth is float64")."""
    model = mnv4.create_model("hybrid_medium").eval()
    photos = torch.from_numpy(photo_batch(model.preprocessing.at(ILL_CONDITIONED_RESOLUTION)))
    randomise_weights(model, photos)
    with torch.no_grad():
        calibrate_batch_norm(model, [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)], photos)
    path = tmp_path_factory.mktemp("weights") / "hybrid_medium.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def test_an_accurate_artifact_passes_where_float32_itself_is_far_from_float64(ill_conditioned_checkpoint, tmp_path,
                                                                              cli):
    result = cli("export", "--format", "onnx", "--variant", "hybrid_medium", "--weights", ill_conditioned_checkpoint,
                 "--resolution", ILL_CONDITIONED_RESOLUTION, "--output", tmp_path / "m.onnx", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["passed"] is True and parity["truth"] == {"reference": "PyTorch float64", "factor": TRUTH_FACTOR}
    truth = parity["worst_float64"]
    # A gate against float32 alone refuses this artifact; float32 is itself that far from the truth.
    assert parity["worst"]["rel_err"] > 100 * FP32.limits.rel_err
    assert truth["pytorch_fp32"]["rel_err"] > 100 * FP32.limits.rel_err
    assert truth["artifact"]["rel_err"] <= TRUTH_FACTOR * truth["pytorch_fp32"]["rel_err"]


@pytest.mark.parametrize("fmt, options, alter", [("onnx", {"dynamic_batch": True}, altered_onnx),
                                                    ("tflite", {}, altered_tflite)])
def test_weights_altered_by_a_tenth_of_a_percent_fail_verify(fmt, options, alter, store, tmp_path, cli):
    artifact = copy_artifact(store.get(fmt, **options), tmp_path)  # judged by the reference stored beside it
    before = sha256(artifact)
    alter(artifact)
    assert sha256(artifact) != before and manifest_path(artifact).exists()
    # Not what its export wrote: refused as it is; judged when the user says to take it as it is.
    assert_one_line_error(cli("verify", artifact), "sha256 differs", "--allow-modified")
    result = cli("verify", artifact, "--allow-modified")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("warning: ") and "sha256 differs" in lines[0]
    assert any("FAIL: relative error" in line and "against float64, where PyTorch float32" in line for line in lines), \
        result.stderr
    assert lines[-1] == f"error: {artifact.name} fails parity" and "Traceback" not in result.stderr


def test_the_gate_is_per_input_and_relative_to_float32s_own_error():
    """Input 1 is ill-conditioned (float32 is 1e-2 from the truth there), input 0 is not: the same 5e-3
    error passes on input 1 and fails on input 0, which the failure names."""
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((3, 100)) * 5
    reference = truth.copy()
    reference[1] += 1e-2 * np.abs(truth[1]).max()
    candidate = truth.copy()
    candidate[1] += 5e-3 * np.abs(truth[1]).max()
    assert truth_breaches(truth, reference, candidate, FP32.limits, photos=2) == []
    candidate[0] += 5e-3 * np.abs(truth[0]).max()
    (failure,) = truth_breaches(truth, reference, candidate, FP32.limits, photos=2)
    assert failure.startswith("relative error 0.005 > 0.0001") and "on photo 0 against float64" in failure
    candidate[2, 7] = np.nan
    assert "random input 2" in truth_breaches(truth, reference, candidate, FP32.limits, photos=2)[0]
