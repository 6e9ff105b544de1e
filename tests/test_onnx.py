"""ONNX artifacts in onnxruntime against the PyTorch model, on real photos: one self-contained, checker-clean file
whose batch axis takes any size (attention too), fp16 weights behind float32 I/O, and static int8 in QDQ form, judged
by the trained fixture's held-out accuracy, with the CPU-specific choice its manifest records."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import (
    Trained,
    check_int8_manifest,
    check_parity,
    manifest_of,
    parity_in_oldest_onnxruntime,
    seeded,
    trained_model,
)
from onnx import helper, numpy_helper

import mnv4
from mnv4.artifact.options import ArtifactOptions
from mnv4.artifact.precisions import FP32, INT8
from mnv4.cpu import int8_dot_product, is_arm
from mnv4.export import onnx as onnx_export
from mnv4.runtimes.onnxruntime import OnnxRuntimeRunner


@pytest.mark.parametrize("variant", ["conv_small", "hybrid_medium"])
def test_fp32_dynamic_batch_is_one_checker_clean_file_matching_pytorch(variant, store):
    artifact = store.get("onnx", variant=variant, dynamic_batch=True)
    assert not list(artifact.parent.glob("*.data")), "weights must not go to an external file"
    model_proto = onnx.load(str(artifact), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model_proto.graph.initializer)
    onnx.checker.check_model(model_proto, full_check=True)
    manifest = manifest_of(artifact)
    assert manifest["input_shape"] == [-1, 3, 64, 64] and manifest["batch"] == "dynamic"
    assert manifest["input_layout"] == "NCHW" and manifest["input_dtype"] == "float32" and manifest["opset"] >= 18
    assert manifest["parity"]["passed"] is True and {"batch_1", "batch_4"} <= set(manifest["parity"])

    reference = seeded(variant)
    session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == manifest["input_name"] and model_input.shape[0] == "batch"
    for batch in (len(reference.inputs), 3):
        logits = session.run(None, {model_input.name: reference.inputs[:batch]})[0]
        check_parity(f"onnx {variant} batch {batch}", reference, logits, FP32.limits, count=batch)


def test_every_gemm_keeps_its_bias_though_it_is_zero(store):
    """The seeded classifier's bias is all zero, which the exporter drops; strict runtimes (ONNX Runtime Web's WebGL)
    refuse a Gemm without one, so the artifact has it, as zeros, in float32 and in int8."""
    seeded_onnx = store.get("onnx", dynamic_batch=True)
    for artifact in (seeded_onnx, store.get("onnx", fixture=True, precision="int8", dynamic_batch=True)):
        gemms = [node for node in onnx.load(str(artifact)).graph.node if node.op_type == "Gemm"]
        assert gemms and all(len(node.input) == 3 for node in gemms), artifact
    model_proto = onnx.load(str(seeded_onnx))
    (gemm,) = [node for node in model_proto.graph.node if node.op_type == "Gemm"]
    (bias,) = [tensor for tensor in model_proto.graph.initializer if tensor.name == gemm.input[2]]
    assert bias.dims == [1000] and not numpy_helper.to_array(bias).any()


def test_the_file_tells_onnxruntime_its_classes_and_preprocessing(store):
    """What an app reads through onnxruntime's own API (get_modelmeta): a doc string, model version 1, and the
    labels (ImageNet's for a 1000-class model; none for the fixture's unnamed digits) and preprocessing as JSON."""
    seeded = onnxruntime.InferenceSession(str(store.get("onnx", dynamic_batch=True))).get_modelmeta()
    assert seeded.version == 1 and "Input 'pixels': float32 NCHW" in seeded.description
    properties = seeded.custom_metadata_map
    labels = json.loads(properties["labels"])
    assert len(labels) == 1000 and labels[0].startswith("tench")
    assert json.loads(properties["preprocessing"]) == {"resolution": 64, "crop_pct": 0.875, "interpolation": "bicubic",
                                                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                                       "layout": "NCHW", "scale": "0-1", "normalised_in_model": False}
    assert properties["variant"] == "conv_small" and properties["mnv4_version"] == mnv4.__version__
    fixture = onnxruntime.InferenceSession(str(store.get("onnx", fixture=True, precision="int8", dynamic_batch=True)))
    assert "labels" not in fixture.get_modelmeta().custom_metadata_map


@pytest.mark.devices
@pytest.mark.parametrize("options", [{"dynamic_batch": True}, {"fixture": True, "precision": "fp16", "batch": 2},
                                     {"fixture": True, "precision": "int8", "dynamic_batch": True}])
def test_onnxruntime_1_17_loads_every_precision_and_it_passes_parity(options, store, tmp_path):
    """Android apps pin older ONNX Runtime Mobile releases: every precision loads in onnxruntime 1.17 (the README's
    oldest; scripts/install_system.sh makes its venv) and passes parity there, the fixture's accuracy included."""
    parity = parity_in_oldest_onnxruntime(store.get("onnx", **options), tmp_path)
    assert parity["passed"], parity["failures"]


def test_fp16_of_the_fixture_keeps_float32_io_and_its_accuracy(store):
    artifact = store.get("onnx", fixture=True, precision="fp16", batch=2)
    manifest = manifest_of(artifact)
    assert manifest["input_dtype"] == manifest["output_dtype"] == "float32" and manifest["weights_dtype"] == "float16"
    assert manifest["input_shape"][0] == 2 and manifest["parity"]["task"]["passed"] is True
    runner = OnnxRuntimeRunner(artifact, threads=2)
    assert runner.artifact_batch == 2  # 449 held-out images run as pairs, the last one zero-padded
    trained_model("conv_small").check_accuracy("onnx conv_small fp16", runner)


# --------------------------------------------------------------------------------------------------- int8

def test_int8_keeps_the_fixtures_accuracy_at_any_batch(store):
    artifact = store.get("onnx", fixture=True, precision="int8", dynamic_batch=True)
    manifest = manifest_of(artifact)
    quantization = check_int8_manifest(manifest)
    assert manifest["input_shape"][0] == -1 and quantization["float_ops"] == {}
    assert manifest["input_dtype"] == manifest["output_dtype"] == "float32"
    runner = OnnxRuntimeRunner(artifact, threads=1)
    assert runner.artifact_batch is None
    fixture = trained_model("conv_small")
    fixture.check_accuracy("onnx conv_small int8", runner)
    images = fixture.held_out.images[:11]
    one_by_one = np.concatenate([runner(image[None]) for image in images])
    for batch in (11, 3):  # a batch that grows back after a smaller one
        np.testing.assert_allclose(runner(images[:batch]), one_by_one[:batch], rtol=0, atol=1e-5)


def test_int8_file_is_qdq_with_per_channel_weights_for_this_cpu(store):
    artifact = store.get("onnx", fixture=True, precision="int8", dynamic_batch=True)
    details = manifest_of(artifact)["quantization"]["details"]
    graph = onnx.load(str(artifact)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops  # the head's pooling rewrite survives
    producer = {output: node for node in graph.node for output in node.output}
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in trained_model("conv_small").model.modules())
    largest = 0
    for conv in convs:
        dequantize = producer[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        weights, scale, zero_point = (initializers[name] for name in dequantize.input)
        axis = next((helper.get_attribute_value(a) for a in dequantize.attribute if a.name == "axis"), 1)
        assert weights.dtype == np.int8 and axis == 0
        assert scale.shape == (weights.shape[0],) and not zero_point.any()  # per channel, symmetric
        largest = max(largest, int(np.abs(weights.astype(np.int32)).max()))
    # onnxruntime's CPU guidance, from this CPU's dot-product instructions.
    reduce_range = not is_arm() and int8_dot_product() is None
    assert details["reduce_range"] is reduce_range and details["format"] == "QDQ"
    assert details["activation_type"] == ("int8" if is_arm() else "uint8")
    if not is_arm() and not reduce_range:
        assert details["cpu"] == int8_dot_product()
    # 7-bit weights where the range is reduced; the full 8 bits (some channel reaching 127) where not.
    assert largest <= 64 if reduce_range else largest == 127
    activation_types = {initializers[node.input[2]].dtype for node in graph.node if node.op_type == "QuantizeLinear"}
    assert activation_types == {np.dtype(details["activation_type"])}


@pytest.mark.parametrize("kind, dot_product, arm, expected", [
    ("x86 without VNNI", None, False, {"reduce_range": True, "activation_type": "uint8", "cpu": "x86 without VNNI"}),
    ("ARM with dot product", "asimddp", True, {"reduce_range": False, "activation_type": "int8", "cpu": "asimddp"}),
])
def test_int8_for_the_other_kinds_of_cpu_keeps_the_accuracy(kind, dot_product, arm, expected, tmp_path, monkeypatch):
    """What an export on another CPU chooses (onnxruntime's guidance), made here by pretending to be one: the
    recorded choice, and an artifact that still classifies the digits (run by this CPU's kernels)."""
    import mnv4.cpu

    monkeypatch.setattr(mnv4.cpu, "int8_dot_product", lambda: dot_product)
    monkeypatch.setattr(mnv4.cpu, "is_arm", lambda: arm)
    fixture = trained_model("conv_small")
    path = tmp_path / "model.onnx"
    facts = onnx_export.export(fixture.model, torch.from_numpy(fixture.training.images[:1]), path,
                               ArtifactOptions(precision=INT8.name), fixture.training.images[:64])
    assert {key: facts.quantization.details[key] for key in expected} == expected, kind
    fixture.check_accuracy(f"onnx int8 as on {kind}", OnnxRuntimeRunner(path))


@pytest.mark.matrix
def test_int8_hybrid_keeps_the_fixtures_accuracy(store):
    """Attention: its matmuls and softmax are quantized too; the pre-attention BatchNorms stay float."""
    artifact = store.get("onnx", variant="hybrid_medium", fixture=True, precision="int8")
    quantization = check_int8_manifest(manifest_of(artifact))
    assert quantization["quantized_op_types"]["MatMul"] > 0
    assert set(quantization["float_ops"]) <= {"BatchNormalization"}
    Trained("hybrid_medium").check_accuracy("onnx hybrid_medium int8", OnnxRuntimeRunner(artifact, threads=2))
