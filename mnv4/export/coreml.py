"""Core ML export: the shared torch.export program converted by coremltools to an ML program, saved
as one .mlpackage directory. Converting and saving work anywhere; running one needs macOS."""
from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import ArtifactFacts, Description, Interface, Quantization
from ..artifact.options import DEFAULT_DEPLOYMENT_TARGET, MAX_BATCH, ArtifactOptions
from ..artifact.precisions import FP16, INT8, Precision
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..errors import MissingExtraError, MNV4Error
from ..runtimes.coreml import COMPUTE_UNITS_METADATA
from .program import export_program

INPUT_NAME = "pixels"
IMAGE_INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# A classifier's outputs, under coremltools' ClassifierConfig names (Xcode's preview and Vision read them through the
# model description's predictedFeatureName and predictedProbabilitiesName, whatever they are called).
LABEL_OUTPUT = "classLabel"
PROBABILITIES_OUTPUT = "classLabel_probs"
PROBABILITIES = "probabilities"  # the softmax inside the program that coremltools' classify op reads
AUTHOR = "mnv4"
COMPUTE_PLAN = ("not known on Linux: which operations run on the Neural Engine, GPU or CPU is Core ML's "
                "per-device compute plan (MLComputePlan), which needs macOS")

# int8: coremltools' linear quantizer, int8 symmetric (zero point 0) for both weights (one scale per
# output channel) and activations (one scale per tensor, from its calibrated min and max). Every
# convolution and linear weight is quantized: weight_threshold 0 instead of coremltools' 2048 elements,
# which would leave small (e.g. depthwise) kernels in float. Biases stay float (coremltools never
# quantizes rank-1 constants).
QUANTIZATION_MODE = "linear_symmetric"
WEIGHT_THRESHOLD = 0
CALIBRATION_ENGINE = "mnv4 ML-program interpreter"
# Chunks of this many images per interpreter run when the program's batch is dynamic.
CALIBRATION_CHUNK = 16
# Operations that only convert between int8 and float, and the activations that the suffix pass lets
# stand between a quantized operation and its output's quantize (fused into that operation on device).
QDQ_OPS = ("quantize", "dequantize")
FUSED_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "tanh", "scaled_tanh", "sigmoid", "hard_sigmoid")
FLOAT_OPS_RULE = ("operations other than const, constexpr and quantize/dequantize that do not sit between "
                  "dequantized int8 inputs (with int8 weights) and a quantize of their output; an activation "
                  "between the operation and that quantize is fused into it and counts with it")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, options: ArtifactOptions,
           calibration: np.ndarray | None = None, description: Description | None = None) -> ArtifactFacts:
    """Write `model` as a Core ML ML program (iOS 17+ unless the options' minimum deployment target says otherwise)
    at `path`; returns its facts. The options' compute units (all, cpu_only, cpu_and_gpu, cpu_and_ne) are stored in
    the model's metadata for whoever loads it: Core ML takes them at load time.

    fp16 is Core ML's float16 compute precision (weights and arithmetic, as the GPU and Neural Engine
    run anyway) with float32 input and output. int8-weights is coremltools' weight-only linear
    quantization of the float32 program (int8 weights, per output channel, symmetric; float32
    arithmetic). int8 (W8A8) adds coremltools' activation quantization, calibrated on `calibration`
    (normalised NCHW float32) through mnv4's ML-program interpreter, since coremltools'
    calibration needs Core ML predictions (macOS). A dynamic batch is a RangeDim from 1 to the shared
    export's maximum. The input is an NCHW float32 tensor, or with `image_input` an RGB image (a
    CVPixelBuffer on device) normalised inside the model with the model's own mean and std (its `preprocessing`;
    ImageNet's for a module without one).

    With a `description` the model describes itself (`_describe`) and, where it names the classes and takes one image at
    a time (classify maps one probability vector to names), is a classifier: `classLabel` (the top class's name) and
    `classLabel_probs` (name -> probability, a softmax inside) come before `logits`, which parity judges.
    """
    try:
        import coremltools as ct
    except ImportError:
        raise MissingExtraError("Core ML export", "coreml") from None

    target = options.minimum_deployment_target or DEFAULT_DEPLOYMENT_TARGET
    precision = options.precision_row
    normalisation = _normalisation_of(model)
    keys = _classifier_keys(description, options, example.shape[0])
    mlmodel, details = _converted(model, example, options, target, normalisation, keys)
    if precision is INT8:
        samples = _calibration_samples(calibration, example.shape[0], options.dynamic_batch,
                                       normalisation if options.image_input else None)
        mlmodel = quantize_activations(mlmodel, samples)
    if precision.quantized:
        from coremltools.optimize.coreml import linear_quantize_weights

        # An output channel whose largest weight is below float16's resolution times 127 gets scale 0 in a
        # float16 program: numpy then warns of 0/0 while the channel is (correctly) written as zeros.
        with np.errstate(divide="ignore", invalid="ignore"):
            mlmodel = linear_quantize_weights(mlmodel, _quantizer_config())
    if options.compute_units:
        mlmodel.user_defined_metadata[COMPUTE_UNITS_METADATA] = options.compute_units
    if description is not None:
        _describe(mlmodel, description, options.image_input, keys is not None)
    mlmodel.save(str(path))

    dtype = _program_dtype(precision)
    details.update(model_type="mlprogram", minimum_deployment_target=target,
                   # None: not set (Core ML's default is all; mnv4's predict runner uses the CPU)
                   compute_units=options.compute_units, compute_plan=COMPUTE_PLAN,
                   **({"max_batch": MAX_BATCH} if options.dynamic_batch else {}),
                   **({"classifier": _classifier_record(description.labels, keys)} if keys else {}))
    quantization = quantization_facts(path, precision, calibration) if precision.quantized else None
    return ArtifactFacts(_interface(options, example), precision.weights_dtype if precision.quantized else dtype,
                         precision.compute_dtype if precision is INT8 else dtype,
                         {"torch": torch.__version__, "coremltools": ct.__version__}, quantization, details=details)


def _interface(options: ArtifactOptions, example: torch.Tensor) -> Interface:
    return Interface(IMAGE_INPUT_NAME if options.image_input else INPUT_NAME, "NCHW",
                     [-1 if options.dynamic_batch else example.shape[0], *example.shape[1:]],
                     "uint8" if options.image_input else "float32", OUTPUT_NAME, "float32",
                     input_kind="image" if options.image_input else "tensor")


def _classifier_keys(description: Description | None, options: ArtifactOptions, batch: int) -> list[str] | None:
    """The class names a classifier maps its probabilities to, where the model is one: it has names, and takes one
    image at a time (a classifier's one probability vector per prediction). None: no classifier."""
    if description is None or description.labels is None or options.dynamic_batch or batch != 1:
        return None
    return classifier_labels(description.labels)


def _normalisation_of(model: torch.nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std the model's inputs are normalised with."""
    preprocessing = getattr(model, "preprocessing", None)
    return (preprocessing.mean, preprocessing.std) if preprocessing is not None else (IMAGENET_MEAN, IMAGENET_STD)


def _converted(model: torch.nn.Module, example: torch.Tensor, options: ArtifactOptions, target: str,
               normalisation: tuple[Sequence[float], Sequence[float]], labels: list[str] | None):
    """coremltools' ML program of the model (a classifier of `labels` where given), and the image normalisation's
    record where the input is an image."""
    import coremltools as ct

    batch = ct.RangeDim(1, MAX_BATCH, default=1) if options.dynamic_batch else example.shape[0]
    shape = (batch, *example.shape[1:])
    details = {}
    if options.image_input:
        folded = _image_normalisation(*normalisation)
        model = _ChannelGain(model, folded["channel_gain"])
        model_input = ct.ImageType(name=IMAGE_INPUT_NAME, shape=shape, scale=folded["scale"],
                                   bias=folded["bias"], color_layout=ct.colorlayout.RGB)
        details["image_normalisation"] = folded
    else:
        model_input = ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)
    precision = ct.precision[_program_dtype(options.precision_row).upper()]
    arguments = {"outputs": [ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)], "compute_precision": precision}
    if labels is not None:
        model = _WithProbabilities(model)
        arguments = _classifier(labels, precision)
    # Core ML converts the inference-dialect program that decompositions give.
    program = export_program(model, example, options.dynamic_batch).run_decompositions({})
    mlmodel = ct.convert(
        program, inputs=[model_input], convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
        # Loading compiles the model for prediction, which only macOS can do; saving needs no load.
        skip_model_load=True, **arguments)
    return mlmodel, details


def _classifier(labels: list[str], precision) -> dict:
    """ct.convert's arguments for a classifier of `labels` that keeps its logits output: coremltools' ClassifierConfig
    turns the softmax output into classify's label and probabilities outputs.

    In a float16 program the softmax stays float32 and reads the float32 logits output, so the probabilities are exactly
    softmax(logits), and the cast that gives the logits is read within the program: coremltools re-runs its passes when
    it quantizes activations, and one of them (topological_reorder) moves a cast that nothing reads after classify,
    where its backend needs classify last."""
    import coremltools as ct

    if precision is ct.precision.FLOAT16:
        precision = ct.transform.FP16ComputePrecision(
            op_selector=lambda op: op.op_type != "softmax" or PROBABILITIES not in (var.name for var in op.outputs))
    pipeline = ct.PassPipeline()
    pipeline.append_pass(_forget_output_types())
    return {"outputs": [ct.TensorType(name=OUTPUT_NAME, dtype=np.float32),
                        ct.TensorType(name=PROBABILITIES, dtype=np.float32)],
            "classifier_config": ct.ClassifierConfig(labels, predicted_feature_name=LABEL_OUTPUT,
                                                     predicted_probabilities_output=PROBABILITIES),
            "compute_precision": precision, "pass_pipeline": pipeline}


def classifier_labels(labels: list[str]) -> list[str]:
    """The class names as the classifier's keys: a name that several classes share (ImageNet's "crane", the bird and the
    machine) gets each class's index after it, so that every class keeps its own entry in the probabilities."""
    counts = Counter(labels)
    return [f"{name} ({index})" if counts[name] > 1 else name for index, name in enumerate(labels)]


def _classifier_record(labels: list[str], keys: list[str]) -> dict:
    """The manifest's record of a classifier: its outputs, and the class names it renamed to keep them apart."""
    renamed = [key for label, key in zip(labels, keys) if key != label]
    return {"label_output": LABEL_OUTPUT, "probabilities_output": PROBABILITIES_OUTPUT,
            **({"renamed": renamed} if renamed else {})}


@functools.cache
def _forget_output_types() -> str:
    """A graph pass, run after coremltools' own, that drops the outputs' types once `update_output_dtypes` has applied
    them: coremltools 9's backend looks each output of a classifier up in that list by its place, and the classify op
    puts its two outputs first, so `logits` (third) is looked up past the end of a list of two (IndexError). A
    classifier with no other output never gets that far; one that keeps `logits` needs this."""
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass

    @register_pass(namespace="mnv4")
    class forget_output_types(AbstractGraphPass):
        def apply(self, prog):
            for function in prog.functions.values():
                function.output_types = None

    return "mnv4::forget_output_types"


class _WithProbabilities(torch.nn.Module):
    """The model's logits and their softmax, the probabilities that Core ML's classifier outputs name by class (Vision
    reports them as confidences, so they must be probabilities, not logits)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=-1)


def _describe(mlmodel, description: Description, image_input: bool, classifier: bool) -> None:
    """What Xcode's model page and an app's MLModelDescription show: author, version (mnv4's), a short description of
    what goes in and comes out, each input's and output's description, and user-defined metadata `mnv4.variant`,
    `mnv4.version`, `mnv4.preprocessing` (JSON), `mnv4.classes` and, where the model is no classifier to hold them,
    `mnv4.labels` (JSON). No license: an artifact's is its weights', which mnv4 does not know for a user's checkpoint."""
    labels, p = description.labels, description.preprocessing
    input_name = IMAGE_INPUT_NAME if image_input else INPUT_NAME
    classes = f"{len(labels)} classes" if labels else "class logits"
    takes = (f"an RGB image, {description.resolution}x{description.resolution}: resize the short side to "
             f"{description.resolution} / {p['crop_pct']} ({p['interpolation']}) and centre-crop; the model normalises it"
             if image_input else f"float32 NCHW RGB images: {description.preprocessing_text()}")
    mlmodel.input_description[input_name] = takes
    mlmodel.output_description[OUTPUT_NAME] = f"{classes} (softmax for probabilities)"
    outputs = f"'{OUTPUT_NAME}' ({classes})"
    if classifier:
        mlmodel.output_description[LABEL_OUTPUT] = "the most probable class's name"
        mlmodel.output_description[PROBABILITIES_OUTPUT] = "each class's probability, by name (softmax of the logits)"
        outputs = f"'{LABEL_OUTPUT}' (the top class's name), '{PROBABILITIES_OUTPUT}' (probabilities by name) and " + outputs
    mlmodel.author = AUTHOR
    mlmodel.version = description.mnv4_version
    mlmodel.short_description = (f"MobileNetV4 {description.variant} exported by mnv4 {description.mnv4_version}. Input "
                                 f"'{input_name}': {takes}. Outputs: {outputs}.")
    layout = {"layout": "RGB image", "scale": "0-255"} if image_input else {"layout": "NCHW", "scale": "0-1"}
    mlmodel.user_defined_metadata.update({
        "mnv4.variant": description.variant, "mnv4.version": description.mnv4_version,
        "mnv4.preprocessing": json.dumps({"resolution": description.resolution, **p, **layout}),
        **({"mnv4.classes": str(len(labels))} if labels else {}),
        **({"mnv4.labels": json.dumps(labels)} if labels and not classifier else {})})


def _program_dtype(precision: Precision) -> str:
    """The float dtype of the converted program. int8-weights quantizes the float32 program's weights. int8 (W8A8)
    quantizes a float16 program, as coremltools' activation quantization expects: its suffix pass writes float16
    scales, which a float32 program's quantize refuses, and what is left in float runs in float16 on the Neural Engine
    anyway."""
    return "float16" if precision in (FP16, INT8) else "float32"


def _image_normalisation(mean: Sequence[float], std: Sequence[float]) -> dict:
    """Core ML's image preprocessing is `scale * pixel + bias` with ONE scale for all channels, so a
    per-channel std cannot be folded into it exactly. Scale by the mean std, and bias by mean / that
    std, so a channel comes out as (pixel/255 - mean) / mean_std: off from the exact value only by
    the factor std / mean_std. The model then multiplies each channel by mean_std / std, which makes
    the normalisation exact; `max_scale_deviation` says how far the single scale alone would be off."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    mean_std = std.mean()
    return {
        "scale": float(1 / (255 * mean_std)),
        "bias": [float(b) for b in -mean / mean_std],
        "channel_gain": [float(g) for g in mean_std / std],
        "max_scale_deviation": float(np.abs(std / mean_std - 1).max()),
    }


class _ChannelGain(torch.nn.Module):
    """Multiplies each input channel by a constant before the model: the per-channel part of the
    normalisation that the image input's single scale leaves out."""

    def __init__(self, model: torch.nn.Module, gain: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.gain)


# ------------------------------------------------------------------------------------------ int8

def _quantizer_config(granularity: str | None = "per_channel"):
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    options = {"granularity": granularity} if granularity else {}
    return OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode=QUANTIZATION_MODE, dtype="int8", weight_threshold=WEIGHT_THRESHOLD, **options))


def _calibration_samples(calibration: np.ndarray, batch: int, dynamic_batch: bool, image_normalisation) -> list:
    """The calibration images as the program's inputs, one prediction's batch each: the artifact's fixed
    batch (the last one filled up with repeats of the first images, which leave every min and max as
    they are), or chunks of a dynamic one. An image input is fed the pixels the images came from."""
    images = np.ascontiguousarray(calibration, dtype=np.float32)
    if image_normalisation:
        mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in image_normalisation)
        images = (images * std + mean) * np.float32(255)
    size = min(CALIBRATION_CHUNK, len(images)) if dynamic_batch else batch
    if len(images) % size:
        images = np.concatenate([images, np.resize(images, (size - len(images) % size, *images.shape[1:]))])
    return [images[start:start + size] for start in range(0, len(images), size)]


def quantize_activations(mlmodel, samples: list[np.ndarray]):
    """coremltools' own `linear_quantize_activations` (its quantize/dequantize insertion passes, iOS 17
    opset) on a float ML program, with its one macOS-only step, the calibration, run by mnv4's
    interpreter: `calibration_stats` stands in for coremltools' `_get_activation_calibration_stats`
    (which appends every intermediate tensor to the outputs and runs MLModel.predict) and returns the
    same {tensor name: {"rmin", "rmax"}} statistics."""
    from unittest import mock

    import coremltools.optimize.coreml._post_training_quantization as post_training
    from coremltools.optimize.coreml import linear_quantize_activations

    if not hasattr(post_training, "_get_activation_calibration_stats"):
        raise MNV4Error(f"coremltools {_coremltools_version()} has no _get_activation_calibration_stats: "
                        f"mnv4's Core ML int8 calibration is written for coremltools 9")
    input_name = mlmodel.get_spec().description.input[0].name
    with mock.patch.object(post_training, "_get_activation_calibration_stats", calibration_stats):
        return linear_quantize_activations(mlmodel, _quantizer_config(granularity=None),
                                           [{input_name: sample} for sample in samples])


def calibration_stats(fpmodel, sample_data: list[dict], calibration_op_group_size: int = -1) -> dict:
    """Each tensor's min and max over all `sample_data`, computed by mnv4's interpreter on the saved float
    program, with what coremltools' calibration records: the inputs and every float tensor an operation
    computes except the model's outputs; then coremltools' own equalisation of the ranges around concat.
    (coremltools 9's recorder keeps only the LAST sample's range of each tensor, overwriting before it takes
    the min and max; this takes them over all samples, as that code sets out to.)"""
    from coremltools.optimize.coreml.experimental._post_training_quantization import _adjust_concat_surrounding_activation_stats

    from ..runtimes.coreml_program import Program

    program = Program(fpmodel.package_path)
    outputs = set(program.block.outputs)
    names = [name for name in program.computed() if name not in outputs]
    ranges: dict[str, list[float]] = {}
    for sample in sample_data:
        values = program.values({name: torch.from_numpy(np.asarray(array)) for name, array in sample.items()})
        for name in [*sample, *names]:
            value = values[name]
            if not value.is_floating_point():
                continue
            low, high = float(value.min()), float(value.max())
            if name in ranges:
                low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
            ranges[name] = [low, high]
    stats = {name: {"rmin": np.float32(low), "rmax": np.float32(high)} for name, (low, high) in ranges.items()}
    concats = [[argument.name for argument in op.inputs["values"].arguments if argument.name] + [op.outputs[0].name]
               for op in program.steps if op.type == "concat"]
    _adjust_concat_surrounding_activation_stats(concats, stats)
    return stats


def quantization_facts(path: Path, precision: Precision, calibration: np.ndarray | None) -> Quantization:
    """What the quantization did, read from the saved program: int8 weight constants, quantize/dequantize
    operations, and which compute operations take int8 (dequantized) activations with int8 weights."""
    from ..runtimes.coreml_program import Program

    program = Program(path)
    graph = _Graph(list(program.block.operations), program.inputs)
    quantized = graph.quantized_operations()
    quantized_ids = {id(op) for op in quantized}
    weight_ops = [op for op in graph.compute if "weight" in op.inputs]
    w8a8 = precision is INT8
    weights = (f"int8 {QUANTIZATION_MODE.replace('_', ' ')} per output channel (coremltools "
               f"linear_quantize_weights, {_constexpr_types(graph.operations)}), "
               f"{sum(graph.weight_of(op) in graph.int8_weights for op in weight_ops)} of "
               f"{len(weight_ops)} conv/linear weights; biases {'float16' if w8a8 else 'float32'}")
    version = _coremltools_version()
    details = {"int8_weight_constants": len(graph.int8_weights)}
    if w8a8:
        details.update(qdq_ops={kind: sum(op.type == kind for op in graph.operations) for kind in QDQ_OPS},
                       float_dtype="float16", calibration_engine=CALIBRATION_ENGINE)  # float16: float ops, scales, biases
    images = len(calibration) if w8a8 else 0
    return Quantization(
        recipe=(f"coremltools {version} linear_quantize_activations (int8 activations per-tensor symmetric, MinMax "
                f"calibration through the {CALIBRATION_ENGINE}), then linear_quantize_weights (int8 weights "
                f"per-channel symmetric), on the float16 program" if w8a8 else
                f"coremltools {version} linear_quantize_weights, int8 weights per-channel symmetric, float32 "
                f"activations and arithmetic (weight-only)"),
        tool=f"coremltools {version}", weights=weights,
        activations=(f"int8 {QUANTIZATION_MODE.replace('_', ' ')} per tensor, min/max over {images} calibration "
                     f"images" if w8a8 else None),
        calibration={"images": images, "method": "min/max of every tensor over all calibration images "
                     "(coremltools' MinMax)"} if w8a8 else None,
        quantized_op_types=dict(Counter(op.type for op in quantized)),
        float_ops=dict(Counter(op.type for op in graph.compute if id(op) not in quantized_ids)),
        float_ops_rule=FLOAT_OPS_RULE, details=details)


class _Graph:
    """A saved program's operations, with who produces and who reads each value."""

    def __init__(self, operations: list, inputs):
        self.operations, self.inputs = operations, inputs
        self.producer = {output.name: op for op in operations for output in op.outputs}
        self.int8_weights = {op.outputs[0].name for op in operations
                             if op.type.startswith("constexpr_") and _constexpr_int8(op)}
        self.compute = [op for op in operations
                        if op.type != "const" and not op.type.startswith("constexpr_") and op.type not in QDQ_OPS]
        self.consumers: dict[str, list] = {}
        for op in operations:
            for _, name in _arguments(op):
                self.consumers.setdefault(name, []).append(op)
        self.int8 = {name for name, op in self.producer.items() if _output_type(op, name) in ("INT8", "UINT8")}

    def weight_of(self, op) -> str | None:
        return dict(_arguments(op)).get("weight")

    def activations(self, op) -> list[str]:
        """The inputs that are neither constants nor compressed weights."""
        return [name for _, name in _arguments(op) if name in self.inputs or
                (self.producer[name].type != "const" and not self.producer[name].type.startswith("constexpr_"))]

    def quantized_result(self, name: str) -> bool:
        """int8 itself, or read only by quantize operations."""
        users = self.consumers.get(name, [])
        return name in self.int8 or (bool(users) and all(user.type == "quantize" for user in users))

    def int8_inputs(self, op) -> bool:
        """int8 activations (as such, or dequantized) and int8 weights if any."""
        weight = self.weight_of(op)
        return (bool(self.activations(op)) and (weight is None or weight in self.int8_weights)
                and all(name in self.int8 or (name in self.producer and self.producer[name].type == "dequantize")
                        for name in self.activations(op)))

    def quantized_operations(self) -> list:
        """The operations between dequantize (or int8 tensors) and quantize, the pattern Core ML runs in int8; an
        activation that coremltools lets stand between the operation and the quantize of its output
        (conv -> relu -> quantize) is fused into it and counts with it."""
        quantized = []
        for op in self.compute:
            if not self.int8_inputs(op):
                continue
            result = op.outputs[0].name
            users = self.consumers.get(result, [])
            if self.quantized_result(result):
                quantized.append(op)
            elif (len(users) == 1 and users[0].type in FUSED_ACTIVATIONS
                  and self.quantized_result(users[0].outputs[0].name)):
                quantized += [op, users[0]]
        return quantized


def _arguments(op) -> list[tuple[str, str]]:
    return [(key, argument.name) for key, bound in op.inputs.items() for argument in bound.arguments
            if argument.WhichOneof("binding") == "name"]


def _output_type(op, name: str) -> str:
    from coremltools.proto import MIL_pb2

    output = next(output for output in op.outputs if output.name == name)
    return MIL_pb2.DataType.Name(output.type.tensorType.dataType)


def _constexpr_int8(op) -> bool:
    from coremltools.proto import MIL_pb2

    return any(MIL_pb2.DataType.Name(value.type.tensorType.dataType) == "INT8"
               for key, value in op.attributes.items() if key in ("quantized_data", "data"))


def _constexpr_types(operations) -> str:
    return ", ".join(sorted({op.type for op in operations if op.type.startswith("constexpr_")})) or "no constexpr"


def _coremltools_version() -> str:
    import coremltools as ct

    return ct.__version__
