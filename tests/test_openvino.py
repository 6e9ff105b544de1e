"""OpenVINO IR: the torch.export program through OpenVINO's converter, the .xml with its .bin of weights beside it (the
format's companion, whose sha256 the manifest records), verified in OpenVINO's CPU plugin with float32 arithmetic."""
import json

import openvino as ov
import pytest
from conftest import assert_one_line_error, check_int8_manifest, copy_artifact, flip_a_byte, manifest_of, run_without_torch

import mnv4
from mnv4.artifact.files import companion_paths, sha256

# The two stored OpenVINO artifacts: seeded float32, and the trained fixture in int8 (its held-out accuracy judged too).
REQUESTS = {"fp32": {}, "int8": {"fixture": True, "precision": "int8"}}


@pytest.fixture(scope="module")
def artifacts(store):
    return {name: store.get("openvino", **options) for name, options in REQUESTS.items()}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_it_passed_parity_in_float32_or_int8_kernels_and_verifies_again(name, artifacts, cli):
    artifact = artifacts[name]
    manifest = manifest_of(artifact)
    assert manifest["format"] == "openvino" and manifest["parity"]["passed"] is True
    weights = companion_paths(artifact)["weights"]
    assert weights.name == artifact.stem + ".bin"
    assert manifest["companions"] == {"weights": {"file": weights.name, "sha256": sha256(weights)}}
    assert manifest["bytes"] == artifact.stat().st_size + weights.stat().st_size  # the weights count in its size
    # What the CPU plugin ran: float32 asked for (it would pick bf16 on a CPU with it), int8 kernels for int8.
    plugin = manifest["cpu_plugin"]
    assert plugin["inference_precision"] == "f32"
    executed = set(plugin["executed_precisions"])
    assert executed and (executed <= {"u8", "i8"} if name == "int8" else executed == {"f32"})
    if name == "int8":
        quantization = check_int8_manifest(manifest)
        assert quantization["float_ops"] == {} and quantization["details"]["fake_quantize_nodes"] > 0
    result = cli("verify", artifact)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stderr


def test_it_verifies_without_torch(artifacts):
    result = run_without_torch("verify", artifacts["fp32"])
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stderr


def test_altered_or_missing_weights_are_refused(artifacts, tmp_path, cli):
    copy = copy_artifact(artifacts["fp32"], tmp_path)
    weights = companion_paths(copy)["weights"]
    flip_a_byte(weights)
    assert_one_line_error(cli("verify", copy), f"{weights} (weights) is not the file the manifest describes")
    weights.unlink()
    assert_one_line_error(cli("verify", copy), f"{weights} (weights), written beside {copy.name} by its export, is not there")


def test_rt_info_describes_the_model_for_apps(artifacts):
    model = ov.Core().read_model(str(artifacts["fp32"]))
    assert len(json.loads(model.get_rt_info(["mnv4", "labels"]).astype(str))) == 1000
    preprocessing = json.loads(model.get_rt_info(["mnv4", "preprocessing"]).astype(str))
    assert preprocessing["layout"] == "NCHW" and preprocessing["resolution"] == 64
    assert model.get_rt_info(["mnv4", "mnv4_version"]).astype(str) == mnv4.__version__
    assert "Input 'pixels': float32 NCHW" in model.get_rt_info(["mnv4", "description"]).astype(str)
    assert model.input().get_any_name() == "pixels" and model.output().get_any_name() == "logits"
