"""TFLite int8 (static, calibrated), int8 I/O and int8-weights (dynamic range) in the real LiteRT runtime.

Judged on the trained digits fixture at 64 px: held-out top-1 against PyTorch float32, calibrated on training
images only. Each test prints its numbers; run with -s to see them."""
from functools import cache

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from mnv4.artifact.parity import MAX_TOP1_LOSS_POINTS, top1
from mnv4.errors import UnsupportedOptionError
from mnv4.export import reference_model
from mnv4.export import tflite as tflite_export
from mnv4.export.tflite import _op_names, _unpack
from mnv4.model.task import digits, predict, trained_fixture
from mnv4.runtimes.litert import LiteRTRunner

CALIBRATION_IMAGES = 64


class Fixture:
    """A variant trained on the digits, its calibration images (training split) and held-out split, and
    PyTorch float32's held-out logits."""

    def __init__(self, variant: str):
        self.variant = variant
        self.model, preprocessing, _ = reference_model(variant, trained_fixture(variant), 64)
        training, self.held_out = digits(preprocessing)
        self.calibration = training.images[:CALIBRATION_IMAGES]
        self.logits = predict(self.model, self.held_out.images)
        self.top1 = top1(self.logits, self.held_out.labels)

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.from_numpy(self.held_out.images[:batch])

    def accuracy(self, runner) -> float:
        return top1(predict(runner, self.held_out.images), self.held_out.labels)


fixture_for = cache(Fixture)


@pytest.fixture(scope="module")
def conv_small_int8(tmp_path_factory):
    """The conv_small fixture's int8 artifact (float32 I/O) and its facts, shared by the tests below."""
    fixture = fixture_for("conv_small")
    path = tmp_path_factory.mktemp("int8") / "model.tflite"
    facts = tflite_export.export(fixture.model, fixture.example(), path, precision="int8",
                                 calibration=fixture.calibration)
    return fixture, path, facts


def graph_of(path):
    """(op name, [non-constant input and output tensor types], [constant input tensor types]) per op."""
    model = _unpack(path.read_bytes())
    graph = model.subgraphs[0]
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}

    def kind(index):
        return type_names[graph.tensors[index].type], model.buffers[graph.tensors[index].buffer].data is not None

    ops = []
    for name, op in zip(_op_names(model), graph.operators):
        tensors = [kind(i) for i in [*op.inputs, *op.outputs] if i >= 0]
        ops.append((name, [t for t, constant in tensors if not constant], [t for t, constant in tensors if constant]))
    return ops


def check_accuracy(label, fixture, runner):
    accuracy = fixture.accuracy(runner)
    print(f"\n{label}: held-out top-1 {accuracy:.2%} against PyTorch float32's {fixture.top1:.2%}")
    assert (fixture.top1 - accuracy) * 100 <= MAX_TOP1_LOSS_POINTS
    return accuracy


def test_int8_keeps_the_fixture_accuracy_with_float_io(conv_small_int8):
    fixture, path, facts = conv_small_int8
    check_accuracy("tflite conv_small int8", fixture, LiteRTRunner(path))
    assert facts["input_dtype"] == facts["output_dtype"] == "float32"
    assert facts["weights_dtype"] == facts["compute_dtype"] == "int8"
    quantization = facts["quantization"]
    assert "static_wi8_ai8" in quantization["recipe"] and quantization["calibration"]["images"] == CALIBRATION_IMAGES
    assert quantization["io"].startswith("float32") and quantization["io_ops"] == {"QUANTIZE": 1, "DEQUANTIZE": 1}
    # Every op between the edges computes in int8: no float op and no DEQUANTIZE/QUANTIZE pair inside.
    ops = graph_of(path)
    assert quantization["float_ops"] == {} and quantization["quantized_ops"] == len(ops) - 2
    assert (ops[0][0], ops[0][1]) == ("QUANTIZE", ["FLOAT32", "INT8"])
    assert (ops[-1][0], ops[-1][1]) == ("DEQUANTIZE", ["INT8", "FLOAT32"])
    assert all(set(types) == {"INT8"} for _, types, _ in ops[1:-1])
    convolutions = [constants for name, _, constants in ops if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convolutions and all(constants[:2] == ["INT8", "INT32"] for constants in convolutions)
    assert "input_quantization" not in facts


def test_int8_io_takes_and_gives_int8_and_the_runner_hides_it(conv_small_int8, tmp_path):
    fixture, float_io_path, _ = conv_small_int8
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(fixture.model, fixture.example(), path, precision="int8",
                                 calibration=fixture.calibration, int8_io=True)
    assert facts["input_dtype"] == facts["output_dtype"] == "int8"
    (model_input,), (model_output,) = (Interpreter(model_path=str(path)).get_input_details(),
                                       Interpreter(model_path=str(path)).get_output_details())
    assert model_input["dtype"] == model_output["dtype"] == np.int8
    for recorded, detail in ((facts["input_quantization"], model_input), (facts["output_quantization"], model_output)):
        scale, zero_point = detail["quantization"]
        assert recorded == {"dtype": "int8", "scale": pytest.approx(scale), "zero_point": zero_point}
        assert recorded["scale"] > 0 and -128 <= recorded["zero_point"] <= 127
    assert facts["quantization"]["io"].startswith("int8") and "io_ops" not in facts["quantization"]
    assert facts["quantization"]["float_ops"] == {}

    # The runner still takes NCHW float32 and gives float32 logits, quantizing with the file's own scales.
    runner, float_io = LiteRTRunner(path), LiteRTRunner(float_io_path)
    logits, float_logits = predict(runner, fixture.held_out.images), predict(float_io, fixture.held_out.images)
    assert logits.dtype == np.float32 and logits.shape == float_logits.shape
    agreement = float((logits.argmax(1) == float_logits.argmax(1)).mean())
    print(f"\nint8 I/O against float I/O: top-1 agreement {agreement:.2%}")
    assert top1(logits, fixture.held_out.labels) == top1(float_logits, fixture.held_out.labels)
    assert agreement >= 0.99

    # What the runner does, by hand: round and clip to int8 with the input's scale, dequantize the output.
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    image = fixture.held_out.images[:1]
    (in_scale, in_zero), (out_scale, out_zero) = model_input["quantization"], model_output["quantization"]
    interpreter.set_tensor(model_input["index"],
                           np.clip(np.round(image / in_scale) + in_zero, -128, 127).astype(np.int8))
    interpreter.invoke()
    expected = (interpreter.get_tensor(model_output["index"]).astype(np.float32) - out_zero) * out_scale
    np.testing.assert_allclose(runner(image), expected, rtol=0, atol=1e-6)


def test_int8_weights_has_int8_weight_buffers_and_float_activations(tmp_path):
    fixture = fixture_for("conv_small")
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(fixture.model, fixture.example(), path, precision="int8-weights")
    assert facts["weights_dtype"] == "int8" and facts["compute_dtype"] == "float32"
    assert facts["input_dtype"] == facts["output_dtype"] == "float32"
    check_accuracy("tflite conv_small int8-weights", fixture, LiteRTRunner(path))
    ops = graph_of(path)
    weighted = [(name, types, constants) for name, types, constants in ops
                if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert weighted and all(constants[0] == "INT8" and set(types) == {"FLOAT32"} for _, types, constants in weighted)
    assert not any("INT8" in types for _, types, _ in ops)  # no int8 activation anywhere
    quantization = facts["quantization"]
    assert quantization["quantized_ops"] == quantization["dynamic_range_ops"] == len(weighted)
    assert quantization["float_ops"]["ADD"] > 0 and quantization["activations"].startswith("float32")


def test_int8_needs_calibration(tmp_path):
    fixture = fixture_for("conv_small")
    with pytest.raises(UnsupportedOptionError, match="calibration"):
        tflite_export.export(fixture.model, fixture.example(), tmp_path / "model.tflite", precision="int8")
    with pytest.raises(UnsupportedOptionError, match="--int8-io"):
        tflite_export.export(fixture.model, fixture.example(), tmp_path / "model.tflite", precision="fp32",
                             int8_io=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.matrix
def test_int8_nhwc_dynamic_batch(tmp_path):
    """A free batch axis on the quantized graph: both conversions quantized with the same ranges."""
    fixture = fixture_for("conv_small")
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(fixture.model, fixture.example(2), path, precision="int8", nhwc=True,
                                 dynamic_batch=True, calibration=fixture.calibration)
    assert facts["input_shape"] == [-1, 64, 64, 3] and facts["input_layout"] == "NHWC"
    assert facts["quantization"]["float_ops"] == {} and facts["quantization"]["calibration"]["batch"] == 2
    runner = LiteRTRunner(path)
    assert runner.artifact_batch is None and runner.layout == "NHWC"
    check_accuracy("tflite conv_small int8 nhwc dynamic", fixture, runner)
    np.testing.assert_allclose(runner(fixture.held_out.images[:3])[1:], runner(fixture.held_out.images[1:3]),
                               atol=1e-6)


def test_int8_quantizes_attention_too(tmp_path):
    """hybrid_medium: the attention's matmuls, softmax and layer scales compute in int8 as well."""
    fixture = fixture_for("hybrid_medium")
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(fixture.model, fixture.example(), path, precision="int8",
                                 calibration=fixture.calibration)
    check_accuracy("tflite hybrid_medium int8", fixture, LiteRTRunner(path))
    assert facts["quantization"]["float_ops"] == {}
    ops = graph_of(path)
    for name in ("BATCH_MATMUL", "FULLY_CONNECTED", "SOFTMAX", "MUL"):
        assert all(set(types) == {"INT8"} for op, types, _ in ops if op == name)
    assert sum(op == "SOFTMAX" for op, _, _ in ops) == 8
