"""Core ML ML programs: converted, saved and read back everywhere, and run by the platform's runner (Core ML's predict
on macOS, mnv4's ML-program interpreter elsewhere): float32 and float16 programs, a free batch, an image input whose
normalisation is folded in, the compute units and deployment target, and coremltools' weight-only and W8A8 int8
judged by the trained fixture (W8A8 calibrated through the interpreter); a model with class names and one image per
prediction is a classifier (label and probabilities, run by the interpreter too), and every model describes itself.
tests/test_coreml_program.py covers the interpreter itself."""
import json

import numpy as np
import pytest
import torch
from conftest import DIGIT_NAMES, check_int8_manifest, check_parity, manifest_of, seeded, trained_model

import mnv4
from mnv4.artifact.options import DEPLOYMENT_TARGETS
from mnv4.artifact.precisions import FP32
from mnv4.data import imagenet_class_names
from mnv4.errors import MNV4Error
from mnv4.export import coreml as coreml_export
from mnv4.runtimes.coreml import CoreMLProgramRunner, CoreMLRunner
from mnv4.runtimes.coreml_program import OPERATIONS, Inputs, Program

W8A8 = {"fixture": True, "precision": "int8", "labels": DIGIT_NAMES}
CLASSIFIER_OUTPUTS = ["classLabel", "classLabel_probs", "logits"]


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
    # ImageNet's names: a classifier where the program takes one image at a time, the names in metadata where not
    assert [output.name for output in spec.description.output] == (["logits"] if dynamic else CLASSIFIER_OUTPUTS)
    (model_input,), model_output = spec.description.input, spec.description.output[-1]
    assert model_input.name == manifest["input_name"] and model_output.name == manifest["output_name"]
    metadata = spec.description.metadata.userDefined
    assert ("mnv4.labels" in metadata) == dynamic and metadata["mnv4.classes"] == "1000"
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


# ------------------------------------------------------------------------------------- classifier, metadata

def classify_op(artifact):
    return next(op for op in Program(artifact).steps if op.type == "classify")


def check_classifications(runner, images, names: list[str]) -> None:
    """The classifier's outputs for each image, as the interpreter runs them: probabilities by name that sum to 1 and
    are softmax(logits), and the name of the logits' top class."""
    logits = runner(images)
    results = runner.classify(images)
    assert len(results) == len(images)
    for result, row in zip(results, logits.astype(np.float64)):
        assert list(result.probabilities) == names
        probabilities = np.array(list(result.probabilities.values()))
        softmax = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert probabilities.sum() == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(probabilities, softmax, rtol=1e-5, atol=1e-7)
        assert result.label == names[int(np.argmax(row))]


def test_a_model_with_class_names_is_a_classifier_that_describes_itself(store):
    """What Xcode's preview and Vision read: the description names the label and probabilities outputs (a string; a
    dictionary from names), the classify op holds ImageNet's names (the two cranes told apart by their index), and
    logits stay an output; the model's metadata says who made it, what goes in and out, and how to preprocess."""
    import coremltools as ct

    artifact = store.get("coreml")
    spec, manifest = spec_of(artifact), manifest_of(artifact)
    description = spec.description
    assert (description.predictedFeatureName, description.predictedProbabilitiesName) == tuple(CLASSIFIER_OUTPUTS[:2])
    label, probabilities, logits = description.output
    assert label.type.WhichOneof("Type") == "stringType"
    assert probabilities.type.dictionaryType.WhichOneof("KeyType") == "stringKeyType"
    assert logits.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    names = coreml_export.classifier_labels(imagenet_class_names())
    assert names[134] == "crane (134)" and names[517] == "crane (517)" and len(set(names)) == 1000
    classes = classify_op(artifact).inputs["classes"].arguments[0].value.immediateValue.list.values
    assert [value.immediateValue.tensor.strings.values[0] for value in classes] == names
    assert manifest["classifier"] == {"label_output": "classLabel", "probabilities_output": "classLabel_probs",
                                      "renamed": ["crane (134)", "crane (517)"]}
    assert manifest["output_name"] == "logits" and manifest["labels"] is None  # the manifest records --labels only

    metadata = description.metadata
    assert metadata.author == "mnv4" and metadata.versionString == mnv4.__version__ and metadata.license == ""
    assert metadata.shortDescription.startswith(f"MobileNetV4 conv_small exported by mnv4 {mnv4.__version__}. Input "
                                                f"'pixels': float32 NCHW RGB images: resize the short side to 64")
    assert "Outputs: 'classLabel' (the top class's name), 'classLabel_probs'" in metadata.shortDescription
    assert {feature.name: bool(feature.shortDescription) for feature in [*description.input, *description.output]} == \
        {"pixels": True, "classLabel": True, "classLabel_probs": True, "logits": True}
    assert {key: metadata.userDefined[key] for key in ("mnv4.variant", "mnv4.version", "mnv4.classes")} == \
        {"mnv4.variant": "conv_small", "mnv4.version": mnv4.__version__, "mnv4.classes": "1000"}
    assert json.loads(metadata.userDefined["mnv4.preprocessing"]) == {
        "resolution": 64, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "layout": "NCHW", "scale": "0-1"}
    assert "mnv4.labels" not in metadata.userDefined  # the classifier holds them


@pytest.mark.parametrize("options", [{}, {"image_input": True}])
def test_the_interpreter_classifies_as_the_classifier_outputs_say(options, store):
    """classify's label and probabilities for the photos, through the tensor input and the image input's pixels."""
    runner = CoreMLProgramRunner(store.get("coreml", **options))
    assert (runner.interface.label_output, runner.interface.probabilities_output) == tuple(CLASSIFIER_OUTPUTS[:2])
    check_classifications(runner, seeded("conv_small").inputs[:5], coreml_export.classifier_labels(imagenet_class_names()))
    if options:
        (image,) = spec_of(store.get("coreml", **options)).description.input
        assert image.shortDescription.startswith("an RGB image, 64x64: resize the short side to 64 / 0.875 (bicubic)")


def test_labels_from_a_file_name_the_classes_of_a_w8a8_classifier(store):
    """`--labels FILE` of the trained digits: the classifier's names are the file's, in a W8A8 program (coremltools
    re-runs its passes when it quantizes activations; the classifier survives them) that classifies held-out digits."""
    artifact = store.get("coreml", **W8A8)
    names = DIGIT_NAMES.read_text().split()
    assert manifest_of(artifact)["labels"] == names and "renamed" not in manifest_of(artifact)["classifier"]
    assert spec_of(artifact).description.metadata.userDefined["mnv4.classes"] == "10"
    check_classifications(CoreMLProgramRunner(artifact), trained_model("conv_small").held_out.images[:8], names)


def test_a_model_without_class_names_stays_a_tensor_model(store):
    """The trained fixture without --labels: its classes have no names, so its only output is the logits."""
    artifact = store.get("coreml", fixture=True, precision="int8-weights")
    description = spec_of(artifact).description
    assert [output.name for output in description.output] == ["logits"] and not description.predictedFeatureName
    assert "classifier" not in manifest_of(artifact) and "mnv4.classes" not in description.metadata.userDefined
    assert "Outputs: 'logits' (class logits)." in description.metadata.shortDescription
    with pytest.raises(MNV4Error, match="is no classifier"):
        CoreMLProgramRunner(artifact).classify(trained_model("conv_small").held_out.images[:1])


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
    artifact = store.get("coreml", **W8A8)
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
    # conv_small: everything between its input and output casts runs in int8; the classifier's softmax and classify
    # read the float32 logits.
    assert quantization["float_ops"] == {"cast": 2, "softmax": 1, "classify": 1} and quantization["quantized_ops"] > 80
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
