"""TFLite artifacts in the LiteRT interpreter against the PyTorch model, on real photos: NCHW and NHWC inputs behind
an NCHW runner, fp16 weights behind float32 I/O, a free batch axis (attention's reshapes too), and the quantized
precisions judged by the trained fixture: static int8 (every operator in int8, float or int8 I/O) and int8-weights
(dynamic range). Each check prints its numbers; run with -s to see them."""
import litert_torch
import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from conftest import (
    Trained,
    check_int8_manifest,
    check_parity,
    exported_output,
    manifest_of,
    run_cli,
    seeded,
    trained_model,
)

from mnv4.artifact.options import ArtifactOptions
from mnv4.artifact.precisions import FP16, FP32
from mnv4.errors import MNV4Error
from mnv4.export import tflite as tflite_export
from mnv4.export.tflite import _op_names, _unpack
from mnv4.model.task import predict
from mnv4.runtimes.litert import LiteRTRunner


def test_fp32_in_the_litert_interpreter(store):
    artifact = store.get("tflite")
    manifest = manifest_of(artifact)
    assert manifest["input_shape"] == [1, 3, 64, 64] and manifest["input_layout"] == "NCHW"
    assert manifest["input_dtype"] == "float32" and manifest["output_name"]
    reference = seeded("conv_small")
    interpreter = Interpreter(model_path=str(artifact), num_threads=2)
    interpreter.allocate_tensors()
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model_input["name"] == manifest["input_name"] and model_output["name"] == manifest["output_name"]
    logits = []
    for image in reference.inputs:
        interpreter.set_tensor(model_input["index"], image[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(model_output["index"])[0])
    check_parity("tflite conv_small", reference, np.stack(logits), FP32.limits)


def test_fp16_nhwc_dynamic_batch_is_verified_at_two_batches_with_stdout_only_json(store):
    """Exported by a fresh `mnv4 export --json` process: stdout holds only the JSON and stderr only mnv4's summary,
    though litert-torch, ai-edge-quantizer, absl, oneDNN and XNNPACK print progress and notices of their own."""
    import json

    artifact = store.get("tflite", precision="fp16", nhwc=True, dynamic_batch=True, cli=True)
    printed = exported_output(artifact)
    summary = printed.stderr.strip().splitlines()
    assert len(summary) == 2, printed.stderr
    assert summary[0].startswith("wrote tflite.tflite (") and "PASS" in summary[1]
    manifest = json.loads(printed.stdout)
    assert manifest == manifest_of(artifact)
    assert manifest["input_shape"] == [-1, 64, 64, 3] and manifest["batch"] == "dynamic"
    assert manifest["input_dtype"] == "float32" and manifest["weights_dtype"] == "float16"
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["tolerance"] == FP16.limits.name
    assert {"batch_1", "batch_4"} <= set(parity) and parity["batch_4"]["all"]["cosine"] >= 0.999
    runner = LiteRTRunner(artifact, threads=2)
    assert runner.layout == "NHWC" and runner.artifact_batch is None
    reference = seeded("conv_small")
    check_parity("tflite conv_small fp16 nhwc", reference, runner(reference.inputs), FP16.limits)

    # The interpreter's own notice (XNNPACK delegate created, once per process) only with --verbose.
    quiet, verbose = run_cli("verify", artifact), run_cli("verify", artifact, "--verbose")
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "XNNPACK" in verbose.stderr and "XNNPACK" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1 and "PASS" in quiet.stderr


@pytest.mark.matrix  # the suite's slowest test (hybrid_medium converted twice): conv_small's dynamic batch stays default
def test_dynamic_batch_with_attention(store):
    """The hard case: attention reshapes fold the batch into rows (B * 16, 64) and (B * heads, L, d)."""
    artifact = store.get("tflite", variant="hybrid_medium", dynamic_batch=True)
    reference = seeded("hybrid_medium")
    interpreter = Interpreter(model_path=str(artifact), num_threads=2)
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model_input["shape_signature"][0] == -1 and list(model_output["shape_signature"]) == [-1, 1000]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "BROADCAST_TO" not in ops and "BATCH_MATMUL" in ops
    for batch in (1, 3, len(reference.inputs)):
        interpreter.resize_tensor_input(model_input["index"], [batch, *model_input["shape"][1:]])
        interpreter.allocate_tensors()
        interpreter.set_tensor(model_input["index"], reference.inputs[:batch])
        interpreter.invoke()
        check_parity(f"tflite hybrid_medium batch {batch}", reference, interpreter.get_tensor(model_output["index"]),
                     FP32.limits, count=batch)


class BroadcastsOverTheBatch(torch.nn.Module):
    """Its BROADCAST_TO shape holds the batch, which no shape signature can free."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).unsqueeze(1).expand(x.shape[0], 4, x.shape[1]).reshape(x.shape[0], -1)


def test_dynamic_batch_refuses_a_graph_it_cannot_free(tmp_path):
    with pytest.raises(MNV4Error, match="cannot make the TFLite batch dynamic: a constant of BROADCAST_TO"):
        tflite_export.export(BroadcastsOverTheBatch(), torch.randn(2, 3, 8, 8), tmp_path / "model.tflite",
                             ArtifactOptions(dynamic_batch=True))
    assert not list(tmp_path.iterdir())


class ConvThenMean(torch.nn.Module):
    """A network without reshapes: the kind litert-torch can convert with a dynamic batch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_the_runner_resizes_a_dynamic_batch_artifact(tmp_path):
    model, path = ConvThenMean().eval(), tmp_path / "model.tflite"
    batch = torch.export.Dim("batch", min=1, max=64)
    litert_torch.convert(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)).export(str(path))
    runner = LiteRTRunner(path)
    assert runner.artifact_batch is None
    for size in (3, 5, 1):
        inputs = torch.randn(size, 3, 16, 16)
        with torch.no_grad():
            np.testing.assert_allclose(runner(inputs.numpy()), model(inputs).numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- int8

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


def test_int8_keeps_the_fixtures_accuracy_with_float_io(store):
    artifact = store.get("tflite", fixture=True, precision="int8")
    manifest = manifest_of(artifact)
    quantization = check_int8_manifest(manifest)
    trained_model("conv_small").check_accuracy("tflite conv_small int8", LiteRTRunner(artifact))
    assert manifest["input_dtype"] == manifest["output_dtype"] == "float32" and "input_quantization" not in manifest
    assert "static_wi8_ai8" in quantization["recipe"] and quantization["calibration"]["batch"] == 1
    details = quantization["details"]
    assert details["io"].startswith("float32") and details["io_ops"] == {"QUANTIZE": 1, "DEQUANTIZE": 1}
    # Every op between the edges computes in int8: no float op and no DEQUANTIZE/QUANTIZE pair inside.
    ops = graph_of(artifact)
    assert quantization["float_ops"] == {} and quantization["quantized_ops"] == len(ops) - 2
    assert (ops[0][0], ops[0][1]) == ("QUANTIZE", ["FLOAT32", "INT8"])
    assert (ops[-1][0], ops[-1][1]) == ("DEQUANTIZE", ["INT8", "FLOAT32"])
    assert all(set(types) == {"INT8"} for _, types, _ in ops[1:-1])
    convolutions = [constants for name, _, constants in ops if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convolutions and all(constants[:2] == ["INT8", "INT32"] for constants in convolutions)


def test_int8_io_takes_and_gives_int8_and_the_runner_hides_it(store):
    fixture = trained_model("conv_small")
    float_io = store.get("tflite", fixture=True, precision="int8")
    artifact = store.get("tflite", fixture=True, precision="int8", int8_io=True)
    manifest = manifest_of(artifact)
    assert manifest["input_dtype"] == manifest["output_dtype"] == "int8" and manifest["parity"]["passed"] is True
    interpreter = Interpreter(model_path=str(artifact))
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model_input["dtype"] == model_output["dtype"] == np.int8
    for recorded, detail in ((manifest["input_quantization"], model_input), (manifest["output_quantization"], model_output)):
        scale, zero_point = detail["quantization"]
        assert recorded == {"dtype": "int8", "scale": pytest.approx(scale), "zero_point": zero_point}
        assert recorded["scale"] > 0 and -128 <= recorded["zero_point"] <= 127
    quantization = manifest["quantization"]
    assert quantization["details"]["io"].startswith("int8") and "io_ops" not in quantization["details"]
    assert quantization["float_ops"] == {}

    # The runner still takes NCHW float32 and gives float32 logits, quantizing with the file's own scales.
    logits = predict(LiteRTRunner(artifact), fixture.held_out.images)
    float_logits = predict(LiteRTRunner(float_io), fixture.held_out.images)
    assert logits.dtype == np.float32 and logits.shape == float_logits.shape
    agreement = float((logits.argmax(1) == float_logits.argmax(1)).mean())
    print(f"\nint8 I/O against float I/O: top-1 agreement {agreement:.2%}")
    assert agreement >= 0.99

    # What the runner does, by hand: round and clip to int8 with the input's scale, dequantize the output.
    interpreter.allocate_tensors()
    image = fixture.held_out.images[:1]
    (in_scale, in_zero), (out_scale, out_zero) = model_input["quantization"], model_output["quantization"]
    interpreter.set_tensor(model_input["index"], np.clip(np.round(image / in_scale) + in_zero, -128, 127).astype(np.int8))
    interpreter.invoke()
    expected = (interpreter.get_tensor(model_output["index"]).astype(np.float32) - out_zero) * out_scale
    np.testing.assert_allclose(LiteRTRunner(artifact)(image), expected, rtol=0, atol=1e-6)
    # The same through LiteRT's CompiledModel (the path of --xnnpack-fp16 and of the GPU accelerator): integer
    # buffers in and out, dequantized alike (XNNPACK's forced float16 moves a logit by a step or two of the scale).
    compiled = LiteRTRunner(artifact, xnnpack_fp16=True)(image)
    np.testing.assert_allclose(compiled, expected, rtol=0, atol=float(out_scale) * 3.01)
    assert compiled.argmax() == expected.argmax()


def test_every_precision_keeps_its_weights_inside_the_flatbuffer(store):
    """ai-edge-quantizer writes weights after the flatbuffer, by offset, which OpenVINO and MediaPipe 0.10 refuse and
    metadata writers lose: every export has them inline."""
    from ai_edge_litert import schema_py_generated as schema

    for options in ({}, {"precision": "fp16", "nhwc": True, "dynamic_batch": True, "cli": True},
                    {"fixture": True, "precision": "int8"}, {"fixture": True, "precision": "int8-weights"}):
        model = schema.ModelT.InitFromPackedBuf(store.get("tflite", **options).read_bytes(), 0)
        assert all(buffer.offset <= 1 for buffer in model.buffers), options


def test_int8_weights_has_int8_weight_buffers_and_float_activations(store):
    artifact = store.get("tflite", fixture=True, precision="int8-weights")
    manifest = manifest_of(artifact)
    assert manifest["weights_dtype"] == "int8" and manifest["compute_dtype"] == "float32"
    assert manifest["input_dtype"] == manifest["output_dtype"] == "float32" and manifest["parity"]["task"]["passed"]
    trained_model("conv_small").check_accuracy("tflite conv_small int8-weights", LiteRTRunner(artifact))
    ops = graph_of(artifact)
    weighted = [(name, types, constants) for name, types, constants in ops
                if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert weighted and all(constants[0] == "INT8" and set(types) == {"FLOAT32"} for _, types, constants in weighted)
    assert not any("INT8" in types for _, types, _ in ops)  # no int8 activation anywhere
    quantization = manifest["quantization"]
    assert quantization["calibration"] is None and quantization["activations"].startswith("float32")
    assert quantization["quantized_ops"] == quantization["details"]["dynamic_range_ops"] == len(weighted)
    assert quantization["float_ops"]["ADD"] > 0


@pytest.mark.matrix
def test_int8_nhwc_dynamic_batch(store):
    """A free batch axis on the quantized graph: both conversions quantized with the same ranges."""
    fixture = trained_model("conv_small")
    artifact = store.get("tflite", fixture=True, precision="int8", nhwc=True, dynamic_batch=True)
    manifest = manifest_of(artifact)
    assert manifest["input_shape"] == [-1, 64, 64, 3] and manifest["input_layout"] == "NHWC"
    assert manifest["quantization"]["float_ops"] == {} and manifest["quantization"]["calibration"]["batch"] == 2
    runner = LiteRTRunner(artifact)
    assert runner.artifact_batch is None and runner.layout == "NHWC"
    fixture.check_accuracy("tflite conv_small int8 nhwc dynamic", runner)
    np.testing.assert_allclose(runner(fixture.held_out.images[:3])[1:], runner(fixture.held_out.images[1:3]), atol=1e-6)


@pytest.mark.matrix
def test_int8_quantizes_attention_too(store):
    """hybrid_medium: the attention's matmuls, softmax and layer scales compute in int8 as well."""
    artifact = store.get("tflite", variant="hybrid_medium", fixture=True, precision="int8")
    Trained("hybrid_medium").check_accuracy("tflite hybrid_medium int8", LiteRTRunner(artifact))
    assert manifest_of(artifact)["quantization"]["float_ops"] == {}
    ops = graph_of(artifact)
    for name in ("BATCH_MATMUL", "FULLY_CONNECTED", "SOFTMAX", "MUL"):
        assert all(set(types) == {"INT8"} for op, types, _ in ops if op == name)
    assert sum(op == "SOFTMAX" for op, _, _ in ops) == 8
