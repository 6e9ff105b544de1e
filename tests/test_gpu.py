"""LiteRT's GPU accelerator (ML Drift over WebGPU/Dawn, the GPU path of LiteRT on phones), run on Mesa's software
Vulkan device (lavapipe, Mesa >= 24): `--runtime litert-gpu` computes in float16 as phones do and is judged by the
fp16-arithmetic limits, `litert-gpu-fp32` keeps float32. Device tier (`-m devices`); the refusals that need no
device run in the default suite."""
import json

import pytest
from conftest import altered_tflite, assert_one_line_error, copy_artifact, read_json

from mnv4.artifact.manifest import manifest_path
from mnv4.artifact.precisions import FLOAT16_ARITHMETIC, FP32

device_tier = pytest.mark.devices


def verified(cli, artifact, *flags) -> tuple[int, dict, str]:
    result = cli("verify", artifact, "--json", *flags)
    return result.returncode, json.loads(result.stdout), result.stderr


@device_tier
def test_the_gpu_delegate_passes_fp32_with_the_float16_arithmetic_limits_fully_accelerated(vulkan, store, cli):
    code, parity, stderr = verified(cli, store.get("tflite"), "--runtime", "litert-gpu")
    assert code == 0 and parity["passed"], stderr
    assert parity["tolerance"] == FLOAT16_ARITHMETIC.name
    assert parity["runtime"] == "litert-gpu" and parity["emulated"] is True and parity["device"] == "gpu"
    assert parity["execution"]["fully_accelerated"] is True and parity["execution"]["arithmetic"] == "float16"
    assert "fully accelerated" in stderr and "emulated here" in stderr and "-> PASS" in stderr
    # float16 arithmetic, not float32's: further from the truth than the fp32 limits allow
    assert parity["worst_float64"]["artifact"]["rel_err"] > FP32.limits.rel_err


@device_tier
def test_float32_on_the_gpu_delegate_meets_the_fp32_limits(vulkan, store, cli):
    code, parity, stderr = verified(cli, store.get("tflite"), "--runtime", "litert-gpu-fp32")
    assert code == 0 and parity["passed"], stderr
    assert parity["tolerance"] == FP32.limits.name and parity["execution"]["arithmetic"] == "float32"


@device_tier
def test_a_largest_weight_scaled_by_one_and_a_half_fails_on_the_gpu(vulkan, store, cli, tmp_path):
    artifact = copy_artifact(store.get("tflite"), tmp_path)
    altered_tflite(artifact, 1.5)
    code, parity, stderr = verified(cli, artifact, "--runtime", "litert-gpu", "--allow-modified")
    assert code == 1 and parity["passed"] is False, stderr
    assert stderr.strip().splitlines()[-1] == f"error: {artifact.name} fails parity"


@device_tier
def test_the_trained_fixture_keeps_its_accuracy_on_the_gpu_in_float16_and_int8(vulkan, store, cli):
    """int8 with integer input and output too: its buffers are int8 on the GPU path, quantized and dequantized with the
    file's own scales."""
    for artifact in (store.get("tflite", fixture=True), store.get("tflite", fixture=True, precision="int8"),
                     store.get("tflite", fixture=True, precision="int8", int8_io=True)):
        code, parity, stderr = verified(cli, artifact, "--runtime", "litert-gpu")
        assert code == 0 and parity["passed"], stderr
        top1 = parity["task"]["top1"]
        assert top1["artifact"] >= top1["pytorch_fp32"] - 0.01, (artifact, top1)


@device_tier
def test_an_export_verified_on_the_gpu_records_it_in_its_manifest(vulkan, store, cli):
    artifact = store.get("tflite", runtime=["litert-gpu"])
    runtimes = read_json(manifest_path(artifact))["parity"]["runtimes"]
    assert list(runtimes) == ["litert-gpu"]
    record = runtimes["litert-gpu"]
    assert record["passed"] and record["tolerance"] == FLOAT16_ARITHMETIC.name and record["emulated"]
    assert record["execution"]["fully_accelerated"]


def test_without_a_vulkan_driver_the_gpu_runtime_is_a_missing_system_part(store, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("VK_DRIVER_FILES", str(tmp_path / "none.json"))
    assert_one_line_error(cli("verify", store.get("tflite"), "--runtime", "litert-gpu"), "Vulkan driver",
                          "is not installed here", "scripts/install_system.sh")


def test_a_runtime_of_another_format_or_an_unknown_one_is_refused(store, cli):
    assert_one_line_error(cli("verify", store.get("tflite"), "--runtime", "ort-web-wasm"),
                          "runtime ort-web-wasm does not run TFLite artifacts", "litert-gpu")
    assert_one_line_error(cli("verify", store.get("tflite"), "--runtime", "litert-gpu16"),
                          "unknown runtime 'litert-gpu16'", "did you mean 'litert-gpu'")
    assert_one_line_error(cli("verify", store.get("tflite"), "--runtime", "litert-gpu", "--xnnpack-fp16"),
                          "--xnnpack-fp16 is not an option", "litert-gpu")
    assert_one_line_error(cli("export", "--format", "executorch", "--runtime", "litert-gpu"),
                          "--runtime is for onnx, tflite and ncnn, not executorch")
    assert_one_line_error(cli("export", "--format", "onnx", "--runtime", "litert-gpu"),
                          "runtime litert-gpu does not run ONNX artifacts")
    assert_one_line_error(cli("bench", "--formats", "onnx,torch", "--runtimes", "cpu,litert-gpu"),
                          "runtime litert-gpu runs TFLite artifacts: add tflite to --formats")
