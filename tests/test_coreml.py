"""Core ML ML programs: converted, saved and read back everywhere, and run by the platform's runner (Core ML's predict
on macOS, mnv4's ML-program interpreter elsewhere): float32 and float16 programs, a free batch, an image input whose
normalisation is folded in, the compute units and deployment target, and coremltools' weight-only and W8A8 int8
judged by the trained fixture (W8A8 calibrated through the interpreter). tests/test_coreml_program.py covers the
interpreter itself."""
import numpy as np
import pytest
import torch
from conftest import check_int8_manifest, check_parity, manifest_of, seeded, trained_model

from mnv4.artifact.options import DEPLOYMENT_TARGETS
from mnv4.artifact.precisions import FP32
from mnv4.export import coreml as coreml_export
from mnv4.runtimes.coreml import CoreMLProgramRunner, CoreMLRunner
from mnv4.runtimes.coreml_program import OPERATIONS, Inputs, Program


def spec_of(artifact):
    import coremltools as ct

    return ct.utils.load_spec(str(artifact))


@pytest.mark.parametrize("options, compute", [({}, "float32"),
                                              ({"precision": "fp16", "dynamic_batch": True,
                                                "compute_units": "cpu_and_ne", "minimum_deployment_target": "iOS16"},
                                               "float16")])
def test_the_mlpackage_is_saved_reads_back_and_is_verified(options, compute, store):
    import coremltools as ct

    artifact = store.get("coreml", **options)
    manifest = manifest_of(artifact)
    dynamic = options.get("dynamic_batch", False)
    assert artifact.is_dir() and (artifact / "Manifest.json").is_file() and manifest["parity"]["passed"] is True
    assert manifest["input_shape"] == [-1 if dynamic else 1, 3, 64, 64] and manifest["input_dtype"] == "float32"
    assert manifest["compute_dtype"] == compute and manifest["model_type"] == "mlprogram"
    spec = spec_of(artifact)
    assert spec.WhichOneof("Type") == "mlProgram"
    (model_input,), (model_output,) = spec.description.input, spec.description.output
    assert model_input.name == manifest["input_name"] and model_output.name == manifest["output_name"]
    # float32 in and out also for fp16, which would otherwise make both float16
    assert model_input.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert model_output.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert list(model_input.type.multiArrayType.shape) == [1, 3, 64, 64]
    batch_range = [(r.lowerBound, r.upperBound) for r in model_input.type.multiArrayType.shapeRange.sizeRanges][:1]
    assert batch_range == ([(1, manifest["max_batch"])] if dynamic else [])
    target = options.get("minimum_deployment_target", "iOS17")
    assert manifest["minimum_deployment_target"] == target and spec.specificationVersion == DEPLOYMENT_TARGETS[target]
    assert manifest["compute_units"] == options.get("compute_units") and "MLComputePlan" in manifest["compute_plan"]
    assert spec.description.metadata.userDefined.get("mnv4.compute_units") == options.get("compute_units")


def test_the_platforms_runner_matches_pytorch(store):
    reference = seeded("conv_small")
    check_parity(f"{CoreMLRunner.runtime} conv_small fp32", reference,
                 CoreMLRunner(store.get("coreml"))(reference.inputs), FP32.limits)


def test_an_image_input_folds_the_normalisation_and_is_verified_on_the_pixels(store):
    """`--image-input` gives a Core ML image input whose folded normalisation is the variant's own, and the export
    proves it computes what the model computes on the normalised photos."""
    artifact = store.get("coreml", image_input=True)
    manifest = manifest_of(artifact)
    assert manifest["input_kind"] == "image" and manifest["input_dtype"] == "uint8" and manifest["input_name"] == "image"
    (model_input,) = spec_of(artifact).description.input
    assert model_input.type.WhichOneof("Type") == "imageType"
    assert model_input.type.imageType.width == model_input.type.imageType.height == 64
    # Core ML's one scale and per-channel bias, then the model's per-channel gain, give the exact normalisation;
    # the single scale alone is off by the ImageNet stds' spread around their mean.
    folding = manifest["image_normalisation"]
    pixels = np.arange(256, dtype=np.float64)[:, None]
    folded = (folding["scale"] * pixels + folding["bias"]) * folding["channel_gain"]
    mean, std = np.asarray(manifest["preprocessing"]["mean"]), np.asarray(manifest["preprocessing"]["std"])
    np.testing.assert_allclose(folded, (pixels / 255 - mean) / std, rtol=1e-12, atol=1e-12)
    assert folding["max_scale_deviation"] == pytest.approx(np.abs(std / std.mean() - 1).max())
    assert 0.01 < folding["max_scale_deviation"] < 0.02
    # Verified on the pixels the photos came from, through the image input's scale and bias and the gain.
    assert manifest["parity"]["passed"] is True and manifest["parity"]["worst"]["rel_err"] <= 1e-4


# --------------------------------------------------------------------------------------------------- int8

def int8_weight_ops(ops):
    from coremltools.proto import MIL_pb2

    return [op for op in ops if op.type == "constexpr_affine_dequantize"
            and MIL_pb2.DataType.Name(op.attributes["quantized_data"].type.tensorType.dataType) == "INT8"]


def check_every_weight_int8(ops) -> int:
    """Every conv and linear weight comes from an int8 constexpr_affine_dequantize (none left in float)."""
    int8_weights = {op.outputs[0].name for op in int8_weight_ops(ops)}
    weighted = [op for op in ops if op.type in ("conv", "linear")]
    assert weighted and all(op.inputs["weight"].arguments[0].name in int8_weights for op in weighted)
    return len(weighted)


def test_int8_weights_program_has_int8_weights_and_keeps_accuracy(store):
    artifact = store.get("coreml", fixture=True, precision="int8-weights")
    ops = list(Program(artifact).block.operations)
    weighted = check_every_weight_int8(ops)
    assert not {"quantize", "dequantize"} & {op.type for op in ops}
    manifest = manifest_of(artifact)
    assert manifest["weights_dtype"] == "int8" and manifest["compute_dtype"] == "float32"
    assert manifest["input_dtype"] == manifest["output_dtype"] == "float32"
    quantization = manifest["quantization"]
    assert quantization["activations"] is None and quantization["calibration"] is None
    assert quantization["quantized_ops"] == 0 and quantization["details"]["int8_weight_constants"] == weighted
    compute = [op for op in ops if op.type != "const" and not op.type.startswith("constexpr_")]
    assert sum(quantization["float_ops"].values()) == len(compute)
    trained_model("conv_small").check_accuracy("coreml int8-weights", CoreMLProgramRunner(artifact))


def test_w8a8_program_quantizes_activations_and_keeps_accuracy(store):
    artifact = store.get("coreml", fixture=True, precision="int8")
    ops = list(Program(artifact).block.operations)
    check_every_weight_int8(ops)
    kinds = [op.type for op in ops]
    assert kinds.count("quantize") > 40 and kinds.count("dequantize") >= kinds.count("quantize")
    producer = {output.name: op for op in ops for output in op.outputs}
    for op in ops:  # every conv and linear reads a dequantized int8 activation
        if op.type in ("conv", "linear"):
            assert producer[op.inputs["x"].arguments[0].name].type == "dequantize", op.outputs[0].name
    manifest = manifest_of(artifact)
    quantization = check_int8_manifest(manifest)
    assert manifest["input_dtype"] == manifest["output_dtype"] == "float32"
    assert quantization["details"]["calibration_engine"] == "mnv4 ML-program interpreter"
    assert "64 calibration images" in quantization["activations"]
    assert quantization["details"]["qdq_ops"] == {"quantize": kinds.count("quantize"),
                                                  "dequantize": kinds.count("dequantize")}
    # conv_small: everything between its input and output casts runs in int8.
    assert quantization["float_ops"] == {"cast": 2} and quantization["quantized_ops"] > 80
    trained_model("conv_small").check_accuracy("coreml int8 (W8A8)", CoreMLProgramRunner(artifact))


def test_calibration_takes_min_and_max_over_every_sample(store):
    """The stand-in for coremltools' calibration records each tensor's range over all samples (coremltools 9's own
    recorder keeps the last sample's) and the input's too, from the float16 program's own values."""
    import coremltools as ct

    fp16 = store.get("coreml", precision="fp16", dynamic_batch=True, compute_units="cpu_and_ne",
                     minimum_deployment_target="iOS16")
    images = trained_model("conv_small").training.images
    samples = [{"pixels": images[i:i + 1]} for i in range(3)]
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
