"""Core ML export: the shared torch.export program converted by coremltools to an ML program, saved
as one .mlpackage directory. Converting and saving work anywhere; running one needs macOS."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..artifact.formats import FORMATS
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..errors import MissingExtraError, MNV4Error, UnsupportedOptionError
from ..runtimes.coreml import COMPUTE_UNITS_METADATA
from .program import MAX_DYNAMIC_BATCH, export_program

INPUT_NAME = "pixels"
IMAGE_INPUT_NAME = "image"
OUTPUT_NAME = "logits"
MINIMUM_DEPLOYMENT_TARGET = "iOS17"
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


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp32",
           dynamic_batch: bool = False, nhwc: bool = False, image_input: bool = False,
           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
           calibration: np.ndarray | None = None, compute_units: str | None = None,
           minimum_deployment_target: str = MINIMUM_DEPLOYMENT_TARGET) -> dict:
    """Write `model` as a Core ML ML program (iOS 17+ unless `minimum_deployment_target` says otherwise) at
    `path`; returns the facts for the manifest. `compute_units` (all, cpu_only, cpu_and_gpu, cpu_and_ne) is
    stored in the model's metadata for whoever loads it: Core ML takes them at load time.

    fp16 is Core ML's float16 compute precision (weights and arithmetic, as the GPU and Neural Engine
    run anyway) with float32 input and output. int8-weights is coremltools' weight-only linear
    quantization of the float32 program (int8 weights, per output channel, symmetric; float32
    arithmetic). int8 (W8A8) adds coremltools' activation quantization, calibrated on `calibration`
    (normalised NCHW float32 images) through mnv4's ML-program interpreter, since coremltools'
    calibration needs Core ML predictions (macOS). A dynamic batch is a RangeDim from 1 to the shared
    export's maximum. The input is an NCHW float32 tensor, or with `image_input` an RGB image (a
    CVPixelBuffer on device) normalised inside the model with `mean` and `std`.
    """
    FORMATS["coreml"].check(precision=precision, nhwc=nhwc, dynamic_batch=dynamic_batch, image_input=image_input,
                            compute_units=compute_units, minimum_deployment_target=minimum_deployment_target)
    if precision == "int8" and (calibration is None or len(calibration) == 0):
        raise UnsupportedOptionError("Core ML --precision int8 needs calibration images (they set its activation ranges)")
    if image_input and (dynamic_batch or example.shape[0] != 1):
        raise UnsupportedOptionError("a Core ML image input is one image per prediction: export a batch of 1, "
                                     "or a tensor input for other batches")
    try:
        import coremltools as ct
    except ImportError:
        raise MissingExtraError("Core ML export", "coreml") from None

    batch = ct.RangeDim(1, MAX_DYNAMIC_BATCH, default=1) if dynamic_batch else example.shape[0]
    shape = (batch, *example.shape[1:])
    facts = {}
    if image_input:
        normalisation = _image_normalisation(mean, std)
        model = _ChannelGain(model, normalisation["channel_gain"])
        model_input = ct.ImageType(name=IMAGE_INPUT_NAME, shape=shape, scale=normalisation["scale"],
                                   bias=normalisation["bias"], color_layout=ct.colorlayout.RGB)
        facts["image_normalisation"] = normalisation
    else:
        model_input = ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)
    # Core ML converts the inference-dialect program that decompositions give.
    program = export_program(model, example, dynamic_batch).run_decompositions({})
    # int8-weights quantizes the float32 program's weights. int8 (W8A8) quantizes a float16 program, as
    # coremltools' activation quantization expects: its suffix pass writes float16 scales, which a float32
    # program's quantize refuses, and what is left in float runs in float16 on the Neural Engine anyway.
    compute_precision = ct.precision.FLOAT16 if precision in ("fp16", "int8") else ct.precision.FLOAT32
    mlmodel = ct.convert(
        program,
        inputs=[model_input],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, minimum_deployment_target),
        compute_precision=compute_precision,
        # Loading compiles the model for prediction, which only macOS can do; saving needs no load.
        skip_model_load=True,
    )
    if precision == "int8":
        samples = _calibration_samples(calibration, example.shape[0], dynamic_batch,
                                       (mean, std) if image_input else None)
        mlmodel = quantize_activations(mlmodel, samples)
    if precision in ("int8", "int8-weights"):
        from coremltools.optimize.coreml import linear_quantize_weights

        # An output channel whose largest weight is below float16's resolution times 127 gets scale 0 in a
        # float16 program: numpy then warns of 0/0 while the channel is (correctly) written as zeros.
        with np.errstate(divide="ignore", invalid="ignore"):
            mlmodel = linear_quantize_weights(mlmodel, _quantizer_config())
    if compute_units:
        mlmodel.user_defined_metadata[COMPUTE_UNITS_METADATA] = compute_units
    mlmodel.save(str(path))

    dtype = "float16" if precision in ("fp16", "int8") else "float32"
    if precision in ("int8", "int8-weights"):
        facts["quantization"] = quantization_facts(path, precision, len(calibration) if precision == "int8" else 0)
    return {
        "toolchain": {"torch": torch.__version__, "coremltools": ct.__version__},
        "input_name": IMAGE_INPUT_NAME if image_input else INPUT_NAME,
        "input_layout": "NCHW",
        "input_shape": [-1 if dynamic_batch else example.shape[0], *example.shape[1:]],
        "input_dtype": "uint8" if image_input else "float32",
        "input_kind": "image" if image_input else "tensor",
        "output_name": OUTPUT_NAME,
        "model_type": "mlprogram",
        "minimum_deployment_target": minimum_deployment_target,
        "compute_units": compute_units,  # None: not set (Core ML's default is all; mnv4's predict runner uses the CPU)
        "delegation": {"compute_plan": COMPUTE_PLAN},
        "weights_dtype": "int8" if precision.startswith("int8") else dtype,
        "compute_dtype": "int8" if precision == "int8" else dtype,
        "output_dtype": "float32",
        **({"max_batch": MAX_DYNAMIC_BATCH} if dynamic_batch else {}),
        **facts,
    }


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


def quantization_facts(path: Path, precision: str, calibration_images: int) -> dict:
    """facts["quantization"], read from the saved program: int8 weight constants, quantize/dequantize
    operations, and which compute operations take int8 (dequantized) activations with int8 weights."""
    from ..runtimes.coreml_program import Program

    program = Program(path)
    operations = list(program.block.operations)
    producer = {output.name: op for op in operations for output in op.outputs}
    int8_weights = {op.outputs[0].name for op in operations
                    if op.type.startswith("constexpr_") and _constexpr_int8(op)}
    compute = [op for op in operations
               if op.type != "const" and not op.type.startswith("constexpr_") and op.type not in QDQ_OPS]

    def arguments(op):
        return [(key, argument.name) for key, bound in op.inputs.items() for argument in bound.arguments
                if argument.WhichOneof("binding") == "name"]

    def activations(op):  # the inputs that are neither constants nor compressed weights
        return [name for _, name in arguments(op) if name in program.inputs or
                (producer[name].type != "const" and not producer[name].type.startswith("constexpr_"))]

    consumers: dict[str, list] = {}
    for op in operations:
        for _, name in arguments(op):
            consumers.setdefault(name, []).append(op)
    int8 = {name for name, op in producer.items() if _output_type(op, name) in ("INT8", "UINT8")}

    def quantized_result(name: str) -> bool:  # int8 itself, or read only by quantize operations
        users = consumers.get(name, [])
        return name in int8 or (bool(users) and all(user.type == "quantize" for user in users))

    def int8_inputs(op) -> bool:  # int8 activations (as such, or dequantized) and int8 weights if any
        weight = dict(arguments(op)).get("weight")
        return (bool(activations(op)) and (weight is None or weight in int8_weights)
                and all(name in int8 or (name in producer and producer[name].type == "dequantize")
                        for name in activations(op)))

    # An operation computes in int8 when it sits between dequantize (or int8 tensors) and quantize, the
    # pattern Core ML runs in int8; an activation that coremltools lets stand between the operation and the
    # quantize of its output (conv -> relu -> quantize) is fused into it and counts with it.
    quantized = set()
    for op in compute:
        if not int8_inputs(op):
            continue
        result = op.outputs[0].name
        users = consumers.get(result, [])
        if quantized_result(result):
            quantized.add(id(op))
        elif (len(users) == 1 and users[0].type in FUSED_ACTIVATIONS
              and quantized_result(users[0].outputs[0].name)):
            quantized.update((id(op), id(users[0])))
    float_ops: dict[str, int] = {}
    for op in compute:
        if id(op) not in quantized:
            float_ops[op.type] = float_ops.get(op.type, 0) + 1
    weight_ops = [op for op in compute if "weight" in op.inputs]
    weights = (f"int8 {QUANTIZATION_MODE.replace('_', ' ')} per output channel (coremltools "
               f"linear_quantize_weights, {_constexpr_types(operations)}), "
               f"{sum(dict(arguments(op)).get('weight') in int8_weights for op in weight_ops)} of "
               f"{len(weight_ops)} conv/linear weights; biases {'float16' if precision == 'int8' else 'float32'}")
    facts = {
        "recipe": (f"coremltools {_coremltools_version()} linear_quantize_activations (int8 activations "
                   f"per-tensor symmetric, MinMax calibration through the {CALIBRATION_ENGINE}), then "
                   f"linear_quantize_weights (int8 weights per-channel symmetric), on the float16 program"
                   if precision == "int8" else
                   f"coremltools {_coremltools_version()} linear_quantize_weights, int8 weights per-channel "
                   f"symmetric, float32 activations and arithmetic (weight-only)"),
        "weights": weights,
        "activations": (f"int8 {QUANTIZATION_MODE.replace('_', ' ')} per tensor, min/max over "
                        f"{calibration_images} calibration images" if precision == "int8" else None),
        "quantized_ops": len(quantized),
        "float_ops": dict(sorted(float_ops.items())),
        "int8_weight_constants": len(int8_weights),
    }
    if precision == "int8":
        facts["qdq_ops"] = {kind: sum(op.type == kind for op in operations) for kind in QDQ_OPS}
        facts["float_dtype"] = "float16"  # what float_ops, scales and biases compute and are stored in
        facts["calibration_engine"] = CALIBRATION_ENGINE
        facts["calibration_method"] = "min/max of every tensor over all calibration images (coremltools' MinMax)"
    return facts


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
