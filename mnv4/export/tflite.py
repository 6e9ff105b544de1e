"""TFLite export through litert-torch, for the LiteRT interpreter."""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME, ArtifactFacts, Description, Interface, Quantization
from ..artifact.options import ArtifactOptions
from ..artifact.precisions import FP16, INT8, INT8_WEIGHTS
from ..errors import MissingExtraError, MNV4Error
from .program import mobile_program
from .tflite_metadata import uint8_io, with_metadata

TOOLCHAIN = ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")

# int8: ai-edge-quantizer's static recipe on litert-torch's float32 model. litert-torch's own PT2E route
# (torchao's quantizer before conversion) runs as fast in XNNPACK (conv_small 224 px, 1 thread: 1.46 ms
# against 1.47 ms; float32 2.85 ms) and keeps the digits fixture within 1 point too, but leaves float ops
# with a DEQUANTIZE/QUANTIZE pair around each (every residual ADD; in hybrid_medium all of attention:
# 16 matmuls, 8 softmaxes, layer scales), takes int8 input and output only, and exports 4x to 10x slower.
# This recipe quantizes every op of both variants and gives float32 I/O by leaving INPUT and OUTPUT
# unquantized (a QUANTIZE and a DEQUANTIZE at the edges).
INT8_RECIPE = ("ai-edge-quantizer static_wi8_ai8 on litert-torch's float32 model: int8 weights per-channel "
               "symmetric, int8 activations per-tensor asymmetric, min/max calibration")
INT8_WEIGHT_SCHEME = "int8 per output channel, symmetric (zero point 0)"
INT8_ACTIVATIONS = "int8 per tensor, asymmetric; range = min and max over the calibration images"
# int8-weights: dynamic range quantization (litert-torch's dynamic recipe, ai-edge-quantizer's dynamic_wi8
# underneath): the file keeps float32 activations; convolutions and the classifier hold int8 weights and
# their hybrid kernels quantize activations on the fly.
DYNAMIC_RECIPE = ("litert-torch full_dynamic_recipe (ai-edge-quantizer dynamic range): int8 weights per-channel "
                  "symmetric, float32 activations quantized on the fly by the hybrid kernels")
DYNAMIC_ACTIVATIONS = ("float32 in the file; the hybrid kernels of the int8-weight ops quantize their input to int8 "
                       "on the fly (per image), the other ops compute in float32")
FLOAT_OPS_RULE = ("an op computes in float when any of its non-constant inputs or outputs is float; a float op with "
                  "int8 constant weights is a dynamic range (hybrid) op and counts as int8; the QUANTIZE and "
                  "DEQUANTIZE of float (or uint8) I/O are edges, not ops")
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")
_INTEGER_ACTIVATION_TYPES = ("INT8", "UINT8", "INT16", "INT4")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, options: ArtifactOptions,
           calibration: np.ndarray | None = None, description: Description | None = None) -> ArtifactFacts:
    """Write `model` as a .tflite file at `path`; returns its facts. Its input and output are named as in every
    format ('pixels' or 'image', 'logits'), in the signature and the tensors alike.

    fp16 stores the convolution and linear weights in half precision and computes in float32
    (litert-torch's fp16 recipe: ai-edge-quantizer's float casting), so inputs and outputs stay
    float32. With `nhwc` the input is NHWC, as TFLite kernels and camera frames lay it out; the output
    is logits. With `dynamic_batch` the batch axis is -1 in the file and the interpreter resizes to
    any batch: litert-torch 0.10 writes every shape and reshape constant for the example's batch, so
    the model is converted at two batches and the sizes that follow the batch are freed (`free_batch`).

    int8 is full-integer static quantization calibrated on `calibration` (NCHW float32, preprocessed like the
    model's inputs): every op computes in int8 and the input and output stay float32,
    with a QUANTIZE and a DEQUANTIZE at the edges, unless `int8_io` makes them int8 tensors too (for NPUs),
    whose scale and zero point the facts record; an image input's integer I/O is uint8 (pixels 0 to 255 in), which
    MediaPipe takes where it refuses int8. int8-weights is dynamic range quantization: int8 weights, float32
    activations, no calibration.

    `description` becomes TFLite metadata (`_with_description`), which MediaPipe Tasks and the TFLite Task Library
    read: with `image_input` (NHWC pixels, normalised in the model) the file drops into MediaPipe's ImageClassifier.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise MissingExtraError("TFLite export", "tflite") from None

    flatbuffer = _flatbuffer(model, example, options, calibration)
    if options.image_input and options.int8_io:
        flatbuffer = uint8_io(flatbuffer)
    path.write_bytes(_with_description(flatbuffer, description, options) if description else flatbuffer)
    # Describe the input and output as the written file declares them.
    interpreter = Interpreter(model_path=str(path))
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    quantized = {"input_quantization": tensor_quantization(model_input),
                 "output_quantization": tensor_quantization(model_output)} if options.int8_io else {}
    interface = Interface(model_input["name"], "NHWC" if options.channels_last else "NCHW",
                          [int(size) for size in model_input["shape_signature"]], model_input["dtype"].__name__,
                          model_output["name"], model_output["dtype"].__name__,
                          input_kind="image" if options.image_input else "tensor", **quantized)
    precision = options.precision_row
    return ArtifactFacts(interface, precision.weights_dtype, precision.compute_dtype,
                         {package: metadata.version(package) for package in TOOLCHAIN},
                         quantization=_quantization(path, options, calibration, len(example)) if precision.quantized
                         else None)


def _with_description(flatbuffer: bytes, description: Description, options: ArtifactOptions) -> bytes:
    """The model with TFLite metadata: its name, what goes in and out, the mnv4 version, an RGB image input where it
    takes pixels (NormalizationOptions mean 0, std 1 for float pixels 0 to 255: the model normalises), the labels as
    the output's label file, and the preprocessing as preprocessing.json. No license: mnv4 cannot know the weights'."""
    layout = "NHWC" if options.channels_last else "NCHW"
    classes = f"{len(description.labels)} classes, named in labels.txt" if description.labels else "class logits"
    return with_metadata(
        flatbuffer, name=f"MobileNetV4 {description.variant}", version=description.mnv4_version, author="mnv4",
        license="", description=f"MobileNetV4 {description.variant} image classifier, exported by mnv4.",
        input_is_image=options.image_input, labels=description.labels,
        preprocessing_json=json.dumps(description.preprocessing_record(layout)),
        input_description=description.input_text("uint8" if options.int8_io else "float32", layout),
        output_description=f"'{OUTPUT_NAME}': {classes} (softmax for probabilities).")


def _flatbuffer(model: torch.nn.Module, example: torch.Tensor, options: ArtifactOptions,
                calibration: np.ndarray | None) -> bytes:
    """The converted (and quantized) model, its batch freed where the options ask."""
    try:
        import litert_torch
        from litert_torch.generative.quantize import quant_recipes
    except ImportError:
        raise MissingExtraError("TFLite export", "tflite") from None

    quant_config = {FP16: quant_recipes.full_fp16_recipe,
                    INT8_WEIGHTS: quant_recipes.full_dynamic_recipe}.get(options.precision_row, lambda: None)()
    # litert-torch prints its own progress on stdout, where it would corrupt `mnv4 export --json`.
    litert_torch.config.show_progress = False
    source = litert_torch.to_channel_last_io(model, args=[0]).eval() if options.nhwc else model.eval()

    def convert(sample: torch.Tensor) -> bytes:
        if options.nhwc:
            sample = sample.permute(0, 2, 3, 1).contiguous()
        module = source
        if options.dynamic_batch:
            # Attention's broadcast matmul as one bmm: litert-torch writes the broadcast as a BROADCAST_TO
            # whose shape holds the batch. (Not for fixed batches: at batch 1 litert-torch 0.10 turns that
            # bmm into a FULLY_CONNECTED that fails to prepare.)
            module = mobile_program(source, sample).module()
            # Traced in eval mode, but an exported module refuses .eval(), and litert-torch would report
            # it as "in training mode".
            module.training = False
        # Its quantization (ai-edge-quantizer) reports progress bars and sizes on stderr and stdout.
        with _quiet() if quant_config else contextlib.nullcontext():
            return bytes(litert_torch.convert(module, (sample,), quant_config=quant_config).model_content())

    flatbuffer, calibrated = convert(example), None
    if options.precision_row is INT8:
        samples = calibration.transpose(0, 2, 3, 1) if options.nhwc else calibration
        flatbuffer, calibrated = quantize_static(flatbuffer, np.ascontiguousarray(samples), options.int8_io)
    if options.dynamic_batch:
        at_next_batch = convert(torch.cat([example, example[:1]]))
        if options.precision_row is INT8:
            # The same ranges for both, so that the two files differ by the batch alone.
            at_next_batch, _ = quantize_static(at_next_batch, None, options.int8_io, calibrated)
        flatbuffer = free_batch(flatbuffer, at_next_batch, len(example))
    # Packed again with every constant inside the flatbuffer: ai-edge-quantizer (fp16, int8-weights, int8) writes
    # most weights after it, referenced by offset, which OpenVINO 2026.4 and MediaPipe 0.10 refuse ("Input tensor ...
    # is not produced") and tools that rewrite the flatbuffer (metadata writers) lose. A flatbuffer holds 2 GB at
    # most; these models are far below it.
    model = _with_deprecated_builtin_codes(_unpack(flatbuffer))
    _name_io(model, IMAGE_INPUT_NAME if options.image_input else INPUT_NAME)
    return _pack(model, len(flatbuffer))


def _name_io(model, input_name: str) -> None:
    """The one input and output named as in every format, in the signature (litert-torch: args_0, output_0) and the
    tensors (serving_default_args_0:0, StatefulPartitionedCall:0)."""
    graph = model.subgraphs[0]
    (signature,) = model.signatureDefs
    for entries, name in ((signature.inputs, input_name), (signature.outputs, OUTPUT_NAME)):
        (entry,) = entries
        entry.name = name
        graph.tensors[entry.tensorIndex].name = name


def _with_deprecated_builtin_codes(model):
    """The model with each operator code's deprecated_builtin_code set as TFLite's own writers set it: the
    builtin code, or 127 (PLACEHOLDER_FOR_GREATER_OP_CODES) from 127 on. ai-edge-quantizer leaves it 0 on the
    DEQUANTIZE and QUANTIZE it adds; LiteRT reads max(builtin_code, deprecated_builtin_code), but OpenVINO 2026.4
    names the op from deprecated_builtin_code when it is below 127 (GraphIteratorFlatBuffer::get_decoder), so
    reads them as ADD and fails on their missing AddOptions ("Chosen Builtin Option is not accessible")."""
    from ai_edge_litert import schema_py_generated as schema

    placeholder = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    for code in model.operatorCodes:
        number = max(code.builtinCode, code.deprecatedBuiltinCode)
        code.builtinCode, code.deprecatedBuiltinCode = number, min(number, placeholder)
    return model


def _pack(model, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _quantization(path: Path, options: ArtifactOptions, calibration: np.ndarray | None, batch: int) -> Quantization:
    """What the quantization did, read back from the written file's operators."""
    quantized, float_ops, details = op_census(path.read_bytes())
    tool = (f"ai-edge-quantizer {metadata.version('ai-edge-quantizer')}, litert-torch "
            f"{metadata.version('litert-torch')}")
    if options.precision_row is INT8:
        integer = "uint8 (the image's pixels)" if options.image_input else "int8"
        io = (f"{integer} (scale and zero point in input_quantization and output_quantization)" if options.int8_io
              else "float32 (QUANTIZE/DEQUANTIZE at the edges)")
        return Quantization(INT8_RECIPE, tool, INT8_WEIGHT_SCHEME, INT8_ACTIVATIONS,
                            {"images": len(calibration), "method": "min/max", "batch": batch},
                            quantized, float_ops, FLOAT_OPS_RULE, {"io": io, **details})
    return Quantization(DYNAMIC_RECIPE, tool, INT8_WEIGHT_SCHEME, DYNAMIC_ACTIVATIONS, None, quantized, float_ops,
                        FLOAT_OPS_RULE, {"io": "float32", **details})


def quantize_static(float_flatbuffer: bytes, samples: np.ndarray | None, int8_io: bool, calibrated=None):
    """`float_flatbuffer` with int8 weights and activations (ai-edge-quantizer's static_wi8_ai8), and the
    calibration result it used: each activation's range, the min and max over `samples` (in the model's
    input layout) run through the float model in batches of its own batch size, or `calibrated` from an
    earlier call. INPUT and OUTPUT stay float32 unless `int8_io`.

    The range is the plain min/max over all images, where `Quantizer.calibrate` smooths the per-batch
    ranges by a moving average, which clips what a few images reach: on the digits fixture that cost
    conv_small 0.45 points and hybrid_medium 0.2 (min/max: none), and on the seeded conv_small at 224
    px it halved the photos' top-1 agreement with float32."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import qsv_utils

    recipe_quantizer = quantizer.Quantizer(float_flatbuffer)
    recipe_quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
    if not int8_io:
        for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            recipe_quantizer.update_quantization_recipe(regex=".*", operation_name=edge,
                                                        algorithm_key=AlgorithmName.NO_QUANTIZE)
    with _quiet():
        if calibrated is None:
            interpreter = Interpreter(model_content=float_flatbuffer)
            ((signature, names),) = interpreter.get_signature_list().items()
            (input_name,) = names["inputs"]
            batch = int(interpreter.get_input_details()[0]["shape"][0])
            # The last batch wraps around to the first images: every batch the model's own size.
            order = np.arange(-(-len(samples) // batch) * batch) % len(samples)
            data = [{input_name: samples[order[start:start + batch]]} for start in range(0, len(order), batch)]
            ranges = calibrator.Calibrator(float_flatbuffer, num_threads=_cores(),
                                           qsv_update_func=qsv_utils.min_max_update)
            manager = recipe_manager.RecipeManager()
            manager.load_quantization_recipe(recipe_quantizer.get_quantization_recipe())
            ranges.calibrate({signature: data}, manager)
            calibrated = ranges.get_model_qsvs()
        result = recipe_quantizer.quantize(calibrated, enable_progress_report=False)
    return bytes(result.quantized_model), calibrated


@contextlib.contextmanager
def _quiet():
    """ai-edge-quantizer's progress (tqdm bars, a size report, the calibration interpreter's warnings) kept
    off stdout and stderr; its errors still raise."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def tensor_quantization(detail: dict) -> dict:
    """The dtype, scale and zero point of an int8 input or output, as the runner reads them from the file."""
    from ..runtimes.litert import quantization_of

    scale, zero_point = quantization_of(detail)
    return {"dtype": detail["dtype"].__name__, "scale": scale, "zero_point": zero_point}


def op_census(flatbuffer: bytes) -> tuple[Counter, Counter, dict]:
    """What computes in which type, read from the file's main graph: (int8 ops by name, float ops by name,
    the counts of dynamic range ops and of I/O edges where there are some).

    An op computes in float when any of its non-constant inputs or outputs is float; in integer (int8)
    when they are all integer and one is int8 (or int16, uint8); a float op whose weights are int8
    constants is a dynamic range (hybrid) op, which quantizes its input on the fly and counts as int8.
    A QUANTIZE of a graph input and a DEQUANTIZE (or QUANTIZE, to uint8) to a graph output are the I/O's edges, not
    ops."""
    from ai_edge_litert import schema_py_generated as schema

    model = _unpack(flatbuffer)
    graph = model.subgraphs[0]
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}

    def is_constant(index: int) -> bool:
        return model.buffers[graph.tensors[index].buffer].data is not None

    def type_of(index: int) -> str:
        return type_names.get(graph.tensors[index].type, str(graph.tensors[index].type))

    quantized, dynamic_range, edges, float_ops = Counter(), 0, Counter(), Counter()
    for name, op in zip(_op_names(model), graph.operators):
        inputs, outputs = [i for i in op.inputs if i >= 0], [i for i in op.outputs if i >= 0]
        activations = [type_of(i) for i in inputs + outputs if not is_constant(i)]
        constants = [type_of(i) for i in inputs if is_constant(i)]
        if (name == "QUANTIZE" and set(inputs) <= set(graph.inputs)) or \
                (name in ("DEQUANTIZE", "QUANTIZE") and set(outputs) <= set(graph.outputs)):
            edges[name] += 1
        elif any(dtype in _FLOAT_TYPES for dtype in activations):
            if name not in ("QUANTIZE", "DEQUANTIZE") and "INT8" in constants:
                quantized[name] += 1
                dynamic_range += 1
            else:
                float_ops[name] += 1
        elif any(dtype in _INTEGER_ACTIVATION_TYPES for dtype in activations):
            quantized[name] += 1
    details = {"dynamic_range_ops": dynamic_range} if dynamic_range else {}
    return quantized, float_ops, {**details, **({"io_ops": dict(sorted(edges.items()))} if edges else {})}


def free_batch(at_batch: bytes, at_next_batch: bytes, batch: int) -> bytes:
    """The model converted at `batch` with its batch axis made free, given the same model converted at
    `batch + 1`.

    Comparing the two conversions op by op shows which sizes follow the batch: a tensor dimension
    that is k·batch in one and k·(batch + 1) in the other becomes -1 in the tensor's shape signature,
    and so does that entry of a RESHAPE's target-shape constant (the interpreter then infers it as
    k·B for any B). Any other difference, such as a broadcast shape, cannot be freed and is an error."""
    model, other = (_unpack(buffer) for buffer in (at_batch, at_next_batch))
    graph, other_graph = model.subgraphs[0], other.subgraphs[0]
    names = _op_names(model)
    if len(model.subgraphs) != 1 or names != _op_names(other):
        raise MNV4Error("cannot make the TFLite batch dynamic: litert-torch converts other batches to other graphs")

    def scaled_entry(sizes: list, other_sizes: list, what: str) -> int | None:
        """The index of the one size that follows the batch; None when no size changes."""
        if sizes == other_sizes:
            return None
        differing = [i for i, (size, other_size) in enumerate(zip(sizes, other_sizes)) if size != other_size]
        index = differing[0]
        if (len(sizes) != len(other_sizes) or len(differing) > 1 or sizes[index] % batch
                or sizes[index] // batch * (batch + 1) != other_sizes[index]):
            raise MNV4Error(f"cannot make the TFLite batch dynamic: {what} changes from {sizes} to "
                            f"{other_sizes} with the batch")
        return index

    freed_buffers = {}
    for name, op, other_op in zip(names, graph.operators, other_graph.operators):
        for position, (index, other_index) in enumerate(zip([*op.inputs, *op.outputs],
                                                            [*other_op.inputs, *other_op.outputs])):
            if index < 0:
                continue
            tensor, other_tensor = graph.tensors[index], other_graph.tensors[other_index]
            data, other_data = model.buffers[tensor.buffer].data, other.buffers[other_tensor.buffer].data
            if data is None:
                entry = scaled_entry(tensor.shape.tolist(), other_tensor.shape.tolist(), f"{name}'s tensor")
                if entry is not None:
                    signature = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape.copy()
                    signature[entry] = -1
                    tensor.shapeSignature = signature
            elif not np.array_equal(data, other_data):
                if name != "RESHAPE" or position != 1:
                    raise MNV4Error(f"cannot make the TFLite batch dynamic: a constant of {name} follows the batch")
                shape = np.frombuffer(bytes(data), np.int32).copy()
                shape[scaled_entry(shape.tolist(), np.frombuffer(bytes(other_data), np.int32).tolist(),
                                   "a RESHAPE target")] = -1
                freed_buffers[tensor.buffer] = np.frombuffer(shape.tobytes(), np.uint8)
    # Constants are shared between ops: a freed shape must feed nothing but RESHAPE targets.
    for name, op in zip(names, graph.operators):
        for position, index in enumerate(op.inputs):
            if index >= 0 and graph.tensors[index].buffer in freed_buffers and (name != "RESHAPE" or position != 1):
                raise MNV4Error(f"cannot make the TFLite batch dynamic: a RESHAPE target is shared with {name}")
    for buffer, data in freed_buffers.items():
        model.buffers[buffer].data = data
    return _pack(model, len(at_batch))


def _unpack(flatbuffer: bytes):
    """The model as objects, with constants that the file keeps after its flatbuffer (as
    ai-edge-quantizer writes them) moved inside, so that it can be packed again."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    for buffer in model.buffers:
        if buffer.offset > 1:  # 1 marks an empty buffer
            buffer.data = np.frombuffer(flatbuffer, np.uint8, buffer.size, buffer.offset)
        buffer.offset = buffer.size = 0
    return model


def _op_names(model) -> list[str]:
    """The builtin operator name of each operator of the main graph, in order."""
    from ai_edge_litert import schema_py_generated as schema

    builtin_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    names = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        number = max(code.builtinCode, code.deprecatedBuiltinCode)  # older files keep small codes in the latter
        names.append(builtin_names.get(number, str(number)))
    return names
