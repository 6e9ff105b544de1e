"""int8 (static post-training quantization) of ONNX and ExecuTorch, in their real runtimes, judged by the
task: the trained digits fixtures keep their held-out top-1 within a point of PyTorch float32's. The files are
read back to check what the manifest says of them: QDQ nodes with per-channel int8 weights in the .onnx, in
the 7-bit range exactly when the recorded CPU choice says so, and every quantized convolution of the .pte
inside its XNNPACK delegate. Each accuracy check prints its line; run with -s to see them.
"""
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import helper, numpy_helper

from mnv4.artifact.parity import MAX_TOP1_LOSS_POINTS, top1
from mnv4.cpu import int8_dot_product, is_arm
from mnv4.errors import UnsupportedOptionError
from mnv4.export import executorch as executorch_export
from mnv4.export import onnx as onnx_export
from mnv4.export import reference_model
from mnv4.model.task import digits, predict, trained_fixture
from mnv4.runtimes.executorch import ExecuTorchRunner
from mnv4.runtimes.onnxruntime import OnnxRuntimeRunner

CALIBRATION_IMAGES = 64  # from the training split; the held-out split judges


class Fixture:
    """A trained fixture at its 64 px, its digits splits and PyTorch float32's held-out top-1."""

    def __init__(self, variant: str):
        self.variant = variant
        self.model, preprocessing, _ = reference_model(variant, trained_fixture(variant), 64)
        self.training, self.held_out = digits(preprocessing)
        self.calibration = self.training.images[:CALIBRATION_IMAGES]
        self.fp32_top1 = top1(predict(self.model, self.held_out.images), self.held_out.labels)

    def example(self, batch: int) -> torch.Tensor:
        return torch.from_numpy(self.training.images[:batch])

    def check_accuracy(self, label: str, runner) -> None:
        accuracy = top1(predict(runner, self.held_out.images), self.held_out.labels)
        loss = (self.fp32_top1 - accuracy) * 100
        print(f"\n{label}: held-out top-1 {accuracy:.2%} (PyTorch float32 {self.fp32_top1:.2%}, {loss:+.2f} points lost)")
        assert loss <= MAX_TOP1_LOSS_POINTS


@pytest.fixture(scope="module")
def fixture():
    made = {}

    def get(variant: str) -> Fixture:
        if variant not in made:
            made[variant] = Fixture(variant)
        return made[variant]

    return get


@pytest.fixture(scope="module")
def int8(tmp_path_factory, fixture):
    """Export a fixture in int8 once per (variant, exporter, options); returns (fixture, path, facts)."""
    made = {}

    def export(variant: str, exporter, suffix: str, batch: int = 1, **options):
        key = (variant, exporter.__name__, batch, tuple(sorted(options.items())))
        if key not in made:
            trained = fixture(variant)
            path = tmp_path_factory.mktemp("int8") / f"model{suffix}"
            facts = exporter.export(trained.model, trained.example(batch), path, precision="int8",
                                    calibration=trained.calibration, **options)
            made[key] = trained, path, facts
        return made[key]

    return export


def check_int8_facts(facts: dict) -> dict:
    assert facts["weights_dtype"] == "int8" and facts["compute_dtype"] == "int8"
    assert facts["input_dtype"] == "float32" and facts["output_dtype"] == "float32"
    quantization = facts["quantization"]
    assert {"recipe", "weights", "activations", "quantized_ops", "float_ops"} <= set(quantization)
    assert quantization["calibration_images"] == CALIBRATION_IMAGES
    assert quantization["quantized_ops"] == sum(quantization["quantized_op_types"].values()) > 0
    return quantization


# ---------------------------------------------------------------------------------------------- ONNX

def test_onnx_int8_keeps_the_fixtures_accuracy_at_any_batch(int8):
    trained, path, facts = int8("conv_small", onnx_export, ".onnx", batch=2, dynamic_batch=True)
    quantization = check_int8_facts(facts)
    assert facts["input_shape"][0] == -1 and quantization["float_ops"] == {}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"

    runner = OnnxRuntimeRunner(path, threads=1)
    assert runner.artifact_batch is None
    trained.check_accuracy("onnx conv_small int8", runner)
    images = trained.held_out.images[:11]
    one_by_one = np.concatenate([runner(image[None]) for image in images])
    for batch in (11, 3):  # a batch that grows back after a smaller one
        np.testing.assert_allclose(runner(images[:batch]), one_by_one[:batch], rtol=0, atol=1e-5)


def test_onnx_int8_file_is_qdq_with_per_channel_weights_for_this_cpu(int8):
    trained, path, facts = int8("conv_small", onnx_export, ".onnx", batch=2, dynamic_batch=True)
    quantization = facts["quantization"]
    model = onnx.load(str(path))
    graph = model.graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops  # the head's pooling rewrite survives
    producer = {output: node for node in graph.node for output in node.output}
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}

    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in trained.model.modules())
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
    assert quantization["reduce_range"] is reduce_range
    assert quantization["activation_type"] == ("int8" if is_arm() else "uint8")
    if not is_arm() and not reduce_range:
        assert quantization["cpu"] == int8_dot_product()
    # 7-bit weights where the range is reduced; the full 8 bits (some channel reaching 127) where not.
    assert largest <= 64 if reduce_range else largest == 127
    activation_types = {initializers[node.input[2]].dtype for node in graph.node if node.op_type == "QuantizeLinear"}
    assert activation_types == {np.dtype(quantization["activation_type"])}


@pytest.mark.parametrize("kind, dot_product, arm, expected", [
    ("x86 without VNNI", None, False, {"reduce_range": True, "activation_type": "uint8", "cpu": "x86 without VNNI"}),
    ("ARM with dot product", "asimddp", True, {"reduce_range": False, "activation_type": "int8", "cpu": "asimddp"}),
])
def test_onnx_int8_for_the_other_kinds_of_cpu_keeps_the_accuracy(kind, dot_product, arm, expected, fixture, tmp_path,
                                                                   monkeypatch):
    """What an export on another CPU chooses (onnxruntime's guidance), made here by pretending to be one: the
    recorded choice, and an artifact that still classifies the digits (run by this CPU's kernels)."""
    import mnv4.cpu

    monkeypatch.setattr(mnv4.cpu, "int8_dot_product", lambda: dot_product)
    monkeypatch.setattr(mnv4.cpu, "is_arm", lambda: arm)
    trained = fixture("conv_small")
    path = tmp_path / "model.onnx"
    facts = onnx_export.export(trained.model, trained.example(1), path, precision="int8",
                               calibration=trained.calibration)
    assert {key: facts["quantization"][key] for key in expected} == expected, kind
    trained.check_accuracy(f"onnx int8 as on {kind}", OnnxRuntimeRunner(path))


def test_onnx_int8_hybrid_keeps_the_fixtures_accuracy(int8):
    """Attention: its matmuls and softmax are quantized too; the pre-attention BatchNorms stay float."""
    trained, path, facts = int8("hybrid_medium", onnx_export, ".onnx")
    quantization = check_int8_facts(facts)
    assert quantization["quantized_op_types"]["MatMul"] > 0
    assert set(quantization["float_ops"]) <= {"BatchNormalization"}
    trained.check_accuracy("onnx hybrid_medium int8", OnnxRuntimeRunner(path, threads=2))


def test_onnx_int8_needs_calibration_images(fixture, tmp_path):
    trained = fixture("conv_small")
    with pytest.raises(UnsupportedOptionError, match="calibration"):
        onnx_export.export(trained.model, trained.example(1), tmp_path / "model.onnx", precision="int8")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- ExecuTorch

def test_executorch_int8_keeps_the_fixtures_accuracy_inside_one_delegate(int8):
    """A fixed batch of 4 (calibration and the runner's padded last batch); every quantized convolution, the
    input's quantization and the output's dequantization inside one XNNPACK call."""
    trained, path, facts = int8("conv_small", executorch_export, ".pte", batch=4)
    quantization = check_int8_facts(facts)
    assert facts["input_shape"] == [4, 3, 64, 64]
    assert facts["delegation"]["delegate_calls"] == 1 and facts["delegation"]["non_delegated_ops"] == {}
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in trained.model.modules())
    assert quantization["quantized_op_types"]["aten.convolution.default"] == convs
    assert quantization["quantized_op_types"]["aten.linear.default"] == 1
    assert quantization["float_ops"] == {}

    runner = ExecuTorchRunner(path, threads=1)
    assert runner.artifact_batch == 4
    trained.check_accuracy("executorch conv_small int8", runner)


def test_executorch_int8_refuses_a_dynamic_batch_and_missing_calibration(fixture, tmp_path):
    trained = fixture("conv_small")
    with pytest.raises(UnsupportedOptionError, match="calibration"):
        executorch_export.export(trained.model, trained.example(1), tmp_path / "model.pte", precision="int8")
    with pytest.raises(UnsupportedOptionError, match="dynamic-batch"):
        executorch_export.export(trained.model, trained.example(2), tmp_path / "model.pte", precision="int8",
                                 dynamic_batch=True, calibration=trained.calibration)
    assert not list(tmp_path.iterdir())


@pytest.mark.matrix
def test_executorch_int8_nhwc(int8):
    trained, path, facts = int8("conv_small", executorch_export, ".pte", nhwc=True)
    quantization = check_int8_facts(facts)
    assert facts["input_layout"] == "NHWC" and facts["delegation"]["non_delegated_ops"] == {}
    # The NHWC -> NCHW permute runs in XNNPACK before the input's quantization.
    assert set(quantization["float_ops"]) <= {"aten.permute_copy.default", "dim_order_ops._clone_dim_order.default"}
    runner = ExecuTorchRunner(path, threads=1)
    assert runner.layout == "NHWC"
    trained.check_accuracy("executorch conv_small int8 nhwc", runner)


@pytest.mark.matrix
def test_executorch_int8_hybrid_keeps_the_fixtures_accuracy(int8):
    """Attention's bmm and softmax stay float inside the delegate (XNNPACKQuantizer does not annotate them)."""
    trained, path, facts = int8("hybrid_medium", executorch_export, ".pte")
    quantization = check_int8_facts(facts)
    assert facts["delegation"]["delegate_calls"] == 1 and facts["delegation"]["non_delegated_ops"] == {}
    assert {"aten.bmm.default", "aten._softmax.default"} <= set(quantization["float_ops"])
    trained.check_accuracy("executorch hybrid_medium int8", ExecuTorchRunner(path, threads=2))
