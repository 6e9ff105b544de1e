"""Core ML int8: coremltools' weight-only int8 (int8-weights) and W8A8 (int8) programs, the W8A8 one calibrated
through mnv4's ML-program interpreter, executed by that interpreter on Linux. Accuracy is judged on the trained
fixture (conv_small, 64 px): held-out top-1 within 1 point of PyTorch float32, calibrated on training images."""
import numpy as np
import pytest
import torch

from mnv4.artifact.parity import MAX_TOP1_LOSS_POINTS, top1
from mnv4.errors import UnsupportedOptionError
from mnv4.export import coreml as coreml_export
from mnv4.export.verify import reference_model
from mnv4.model.task import digits, predict, trained_fixture
from mnv4.runtimes.coreml import CoreMLProgramRunner
from mnv4.runtimes.coreml_program import OPERATIONS, Inputs, Program


@pytest.fixture(scope="module")
def fixture():
    """conv_small trained on the digits at 64 px, its splits and PyTorch float32's held-out logits."""
    model, preprocessing, _ = reference_model("conv_small", trained_fixture("conv_small"), 64)
    training, held_out = digits(preprocessing)
    return model, training, held_out, predict(model, held_out.images)


@pytest.fixture(scope="module")
def exported(fixture, tmp_path_factory):
    """One export per precision: (path, facts)."""
    model, training, _, _ = fixture
    made = {}

    def export(precision: str):
        if precision not in made:
            path = tmp_path_factory.mktemp("coreml-int8") / "model.mlpackage"
            calibration = training.images[:64] if precision == "int8" else None
            facts = coreml_export.export(model, torch.from_numpy(training.images[:1]), path, precision=precision,
                                         calibration=calibration)
            made[precision] = path, facts
        return made[precision]

    return export


def operations(path):
    program = Program(path)
    return program, list(program.block.operations)


def int8_weight_ops(program, ops):
    from coremltools.proto import MIL_pb2

    return [op for op in ops if op.type == "constexpr_affine_dequantize"
            and MIL_pb2.DataType.Name(op.attributes["quantized_data"].type.tensorType.dataType) == "INT8"]


def check_every_weight_int8(program, ops):
    """Every conv and linear weight comes from an int8 constexpr_affine_dequantize (none left in float)."""
    int8_weights = {op.outputs[0].name for op in int8_weight_ops(program, ops)}
    weighted = [op for op in ops if op.type in ("conv", "linear")]
    assert weighted and all(op.inputs["weight"].arguments[0].name in int8_weights for op in weighted)
    return len(weighted)


def check_accuracy(label, path, fixture):
    _, _, held_out, reference = fixture
    accuracy, reference_accuracy = top1(predict(CoreMLProgramRunner(path), held_out.images), held_out.labels), \
        top1(reference, held_out.labels)
    print(f"{label}: held-out top-1 {100 * accuracy:.2f} % vs PyTorch float32 {100 * reference_accuracy:.2f} %")
    assert accuracy >= reference_accuracy - MAX_TOP1_LOSS_POINTS / 100


def test_int8_weights_program_has_int8_weights_and_keeps_accuracy(exported, fixture):
    path, facts = exported("int8-weights")
    program, ops = operations(path)
    weighted = check_every_weight_int8(program, ops)
    assert not {"quantize", "dequantize"} & {op.type for op in ops}
    assert facts["weights_dtype"] == "int8" and facts["compute_dtype"] == "float32"
    assert facts["input_dtype"] == facts["output_dtype"] == "float32"
    quantization = facts["quantization"]
    assert quantization["activations"] is None and quantization["quantized_ops"] == 0
    assert quantization["int8_weight_constants"] == weighted
    compute = [op for op in ops if op.type != "const" and not op.type.startswith("constexpr_")]
    assert sum(quantization["float_ops"].values()) == len(compute)
    check_accuracy("coreml int8-weights conv_small 64 px", path, fixture)


def test_w8a8_program_quantizes_activations_and_keeps_accuracy(exported, fixture):
    path, facts = exported("int8")
    program, ops = operations(path)
    check_every_weight_int8(program, ops)
    kinds = [op.type for op in ops]
    assert kinds.count("quantize") > 40 and kinds.count("dequantize") >= kinds.count("quantize")
    # Every conv and linear reads a dequantized int8 activation.
    producer = {output.name: op for op in ops for output in op.outputs}
    for op in ops:
        if op.type in ("conv", "linear"):
            assert producer[op.inputs["x"].arguments[0].name].type == "dequantize", op.outputs[0].name
    assert facts["weights_dtype"] == "int8" and facts["compute_dtype"] == "int8"
    assert facts["input_dtype"] == facts["output_dtype"] == "float32"
    quantization = facts["quantization"]
    assert quantization["calibration_engine"] == "mnv4 ML-program interpreter"
    assert "64 calibration images" in quantization["activations"]
    assert quantization["qdq_ops"] == {"quantize": kinds.count("quantize"), "dequantize": kinds.count("dequantize")}
    # conv_small: everything between its input and output casts runs in int8.
    assert quantization["float_ops"] == {"cast": 2} and quantization["quantized_ops"] > 80
    check_accuracy("coreml int8 (W8A8) conv_small 64 px", path, fixture)


def test_calibration_takes_min_and_max_over_every_sample(exported, fixture):
    """The stand-in for coremltools' calibration records each tensor's range over all samples (coremltools 9's
    own recorder keeps the last sample's) and the input's too, from the float16 program's own values."""
    import coremltools as ct

    model, training, _, _ = fixture
    fp16 = exported("int8")[0].parent / "fp16.mlpackage"
    coreml_export.export(model, torch.from_numpy(training.images[:1]), fp16, precision="fp16")
    samples = [{"pixels": training.images[i:i + 1]} for i in range(3)]
    stats = coreml_export.calibration_stats(ct.models.MLModel(str(fp16), skip_model_load=True), samples)
    program = Program(fp16)
    runs = [program.values({"pixels": torch.from_numpy(s["pixels"])}) for s in samples]
    name = next(n for n in program.computed() if n.startswith("relu"))
    assert stats[name]["rmin"] == min(float(run[name].min()) for run in runs)
    assert stats[name]["rmax"] == max(float(run[name].max()) for run in runs)
    assert stats["pixels"]["rmax"] == max(float(s["pixels"].max()) for s in samples)
    assert not set(program.block.outputs) & set(stats)


def test_quantize_and_dequantize_match_coremltools():
    """The interpreter's quantize/dequantize against coremltools' own value inference for them: division by the
    scale, rounding half to even, zero point, saturation to int8 or uint8; per tensor and per axis."""
    from coremltools.optimize._utils import dequantize_by_scale_and_zp, quantize_by_scale_and_zp

    rng = np.random.default_rng(0)
    x = rng.uniform(-300, 300, (2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 0, :5] = [0.5, 1.5, -2.5, 200.0, -200.0]  # ties and saturation, at scale 1
    cases = [
        (np.float32(1.0), None, "int8", None),
        (np.float32(0.7), np.int8(-3), "int8", None),
        (np.array([0.5, 1.0, 2.0], np.float32), np.array([0, 10, 250], np.uint8), "uint8", 1),
    ]
    for scale, zero_point, dtype, axis in cases:
        values = {"input": torch.from_numpy(x), "scale": torch.as_tensor(scale), "output_dtype": dtype}
        if zero_point is not None:
            values["zero_point"] = torch.as_tensor(zero_point)
        if axis is not None:
            values["axis"] = torch.tensor(axis)
        quantized = OPERATIONS["quantize"](Inputs("quantize", values))
        shaped = [np.asarray(v).reshape([-1 if i == axis else 1 for i in range(4)]) if axis is not None else v
                  for v in (scale, zero_point)]
        expected = quantize_by_scale_and_zp(x, shaped[0], shaped[1], dtype)
        assert str(quantized.dtype) == f"torch.{dtype}"
        np.testing.assert_array_equal(quantized.numpy(), expected)
        dequantized = OPERATIONS["dequantize"](Inputs("dequantize", {**values, "input": quantized}))
        np.testing.assert_allclose(dequantized.numpy(), dequantize_by_scale_and_zp(expected, shaped[0], shaped[1]),
                                   rtol=1e-6)
    assert OPERATIONS["quantize"](Inputs("quantize", {"input": torch.from_numpy(x[0, 0, 0, :5]),
                                                      "scale": torch.tensor(1.0), "output_dtype": "int8"})
                                  ).tolist() == [0, 2, -2, 127, -128]


def test_int8_needs_calibration(fixture, tmp_path):
    model, training, _, _ = fixture
    with pytest.raises(UnsupportedOptionError, match="needs calibration images"):
        coreml_export.export(model, torch.from_numpy(training.images[:1]), tmp_path / "m.mlpackage", precision="int8")
