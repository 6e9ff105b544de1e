"""ONNX and TFLite exports in their real runtimes against the PyTorch model, on real photos.

Each test prints its parity line (relative error, cosine, top-1 agreement); run with -s to see them.
"""

import litert_torch
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from conftest import reference_for, relative_error

from mnv4.artifact.parity import compare
from mnv4.errors import MNV4Error, UnsupportedOptionError
from mnv4.export import onnx as onnx_export
from mnv4.export import tflite as tflite_export
from mnv4.runtimes.litert import LiteRTRunner
from mnv4.runtimes.onnxruntime import OnnxRuntimeRunner

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
FP16_MIN_COSINE = 0.999


def check_parity(label, expected, actual, precision="fp32"):
    parity = compare(expected, actual)
    print(f"\n{label} {precision}: relative error {parity.rel_err:.2e}, min cosine {parity.cosine:.6f}, "
          f"top-1 agreement {parity.top1_agreement:.0%}")
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert parity.rel_err == pytest.approx(relative_error(expected, actual))
    if precision == "fp32":
        assert parity.rel_err <= FP32_TOLERANCE
    else:
        assert parity.rel_err <= FP16_TOLERANCE and parity.cosine >= FP16_MIN_COSINE


# ---------------------------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("reference", ["conv_small", "hybrid_medium"], indirect=True)
def test_onnx_fp32_dynamic_batch_in_onnxruntime(reference, tmp_path):
    """One self-contained, checker-clean file whose batch axis takes any size."""
    path = tmp_path / "model.onnx"
    facts = onnx_export.export(reference.model, reference.example(2), path, dynamic_batch=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "weights must not go to an external file"
    model_proto = onnx.load(str(path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model_proto.graph.initializer)
    onnx.checker.check_model(model_proto, full_check=True)
    assert facts["input_shape"] == [-1, 3, reference.resolution, reference.resolution]
    assert facts["input_layout"] == "NCHW" and facts["input_dtype"] == "float32"

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == facts["input_name"] and model_input.shape[0] == "batch"
    for batch in (len(reference.inputs), 3):
        logits = session.run(None, {model_input.name: reference.inputs[:batch]})[0]
        check_parity(f"onnx {reference.model.variant} batch {batch}", reference.logits[:batch], logits)


def test_onnx_fp16_keeps_float32_io_and_accuracy(reference, tmp_path):
    path = tmp_path / "model.onnx"
    facts = onnx_export.export(reference.model, reference.example(4), path, precision="fp16")
    assert facts["input_dtype"] == "float32" and facts["weights_dtype"] == "float16"
    assert facts["input_shape"][0] == 4
    runner = OnnxRuntimeRunner(path, threads=2)
    assert runner.artifact_batch == 4  # eleven inputs run as 4 + 4 + 3 (zero-padded)
    check_parity(f"onnx {reference.model.variant}", reference.logits, runner(reference.inputs), "fp16")


def test_onnx_rejects_nhwc(conv_small, tmp_path):
    with pytest.raises(UnsupportedOptionError, match="NCHW"):
        onnx_export.export(conv_small.model, conv_small.example(1), tmp_path / "model.onnx", nhwc=True)
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------- TFLite

def test_tflite_fp32_in_litert_interpreter(reference, tmp_path):
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(reference.model, reference.example(1), path)
    assert facts["input_shape"] == [1, 3, reference.resolution, reference.resolution]
    assert facts["input_layout"] == "NCHW" and facts["input_dtype"] == "float32"

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model_input["name"] == facts["input_name"]
    logits = []
    for image in reference.inputs:
        interpreter.set_tensor(model_input["index"], image[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(model_output["index"])[0])
    check_parity(f"tflite {reference.model.variant}", reference.logits, np.stack(logits))


def test_tflite_fp16_keeps_float32_io_and_accuracy(conv_small, tmp_path):
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(conv_small.model, conv_small.example(1), path, precision="fp16")
    assert facts["input_dtype"] == "float32" and facts["weights_dtype"] == "float16"
    check_parity("tflite conv_small", conv_small.logits, LiteRTRunner(path, threads=2)(conv_small.inputs), "fp16")


def test_tflite_nhwc_input_behind_an_nchw_runner(conv_small, tmp_path):
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(conv_small.model, conv_small.example(2), path, nhwc=True)
    assert facts["input_layout"] == "NHWC"
    assert facts["input_shape"] == [2, conv_small.resolution, conv_small.resolution, 3]
    runner = LiteRTRunner(path, threads=2)
    assert runner.layout == "NHWC" and runner.artifact_batch == 2  # eleven inputs: five pairs and a padded one
    check_parity("tflite conv_small nhwc", conv_small.logits, runner(conv_small.inputs))


@pytest.fixture
def hybrid_medium():
    return reference_for("hybrid_medium")


def test_tflite_dynamic_batch_in_litert_interpreter(hybrid_medium, tmp_path):
    """The hard case: attention reshapes fold the batch into rows (B * 64, 64) and (B * heads, L, d)."""
    path = tmp_path / "model.tflite"
    facts = tflite_export.export(hybrid_medium.model, hybrid_medium.example(2), path, dynamic_batch=True)
    assert facts["input_shape"] == [-1, 3, hybrid_medium.resolution, hybrid_medium.resolution]

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model_input["shape_signature"][0] == -1 and list(model_output["shape_signature"]) == [-1, 1000]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "BROADCAST_TO" not in ops and "BATCH_MATMUL" in ops
    for batch in (1, 3, len(hybrid_medium.inputs)):
        interpreter.resize_tensor_input(model_input["index"], [batch, *model_input["shape"][1:]])
        interpreter.allocate_tensors()
        interpreter.set_tensor(model_input["index"], hybrid_medium.inputs[:batch])
        interpreter.invoke()
        logits = interpreter.get_tensor(model_output["index"])
        check_parity(f"tflite hybrid_medium batch {batch}", hybrid_medium.logits[:batch], logits)


class BroadcastsOverTheBatch(torch.nn.Module):
    """Its BROADCAST_TO shape holds the batch, which no shape signature can free."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).unsqueeze(1).expand(x.shape[0], 4, x.shape[1]).reshape(x.shape[0], -1)


def test_tflite_dynamic_batch_refuses_a_graph_it_cannot_free(tmp_path):
    with pytest.raises(MNV4Error, match="cannot make the TFLite batch dynamic: a constant of BROADCAST_TO"):
        tflite_export.export(BroadcastsOverTheBatch(), torch.randn(2, 3, 8, 8), tmp_path / "model.tflite",
                             dynamic_batch=True)
    assert not list(tmp_path.iterdir())


class ConvThenMean(torch.nn.Module):
    """A network without reshapes: the kind litert-torch can convert with a dynamic batch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_litert_runner_resizes_a_dynamic_batch_artifact(tmp_path):
    model, path = ConvThenMean().eval(), tmp_path / "model.tflite"
    batch = torch.export.Dim("batch", min=1, max=64)
    litert_torch.convert(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)).export(str(path))
    runner = LiteRTRunner(path)
    assert runner.artifact_batch is None
    for size in (3, 5, 1):
        inputs = torch.randn(size, 3, 16, 16)
        with torch.no_grad():
            np.testing.assert_allclose(runner(inputs.numpy()), model(inputs).numpy(), rtol=1e-5, atol=1e-5)
