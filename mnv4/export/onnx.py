"""ONNX export: the shared torch.export program through torch's dynamo ONNX exporter, written as
one self-contained .onnx file and validated with the ONNX checker. int8 is onnxruntime's static
quantization in QDQ form (QuantizeLinear/DequantizeLinear pairs around float operators, which
onnxruntime fuses into integer kernels when it loads the file)."""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.facts import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME, ArtifactFacts, Description, Interface, Quantization
from ..artifact.options import ArtifactOptions
from ..artifact.precisions import FP16, INT8
from ..errors import MissingExtraError
from .program import export_program

# torch's dynamo exporter writes opset 18 and later (asked for 17, its converter fails on ReduceMean's axes);
# onnxruntime reads 20 from 1.17 on.
DEFAULT_OPSET = 20
BATCH_AXIS_NAME = "batch"
TOOLCHAIN = ("torch", "onnx", "onnxscript")

# Which inputs of an op are weights. fp16 stores only these in half precision: they are nearly
# all of the file, while norm statistics, biases and layer-scale factors (values down to 1e-5)
# stay exact in float32.
_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}

# Static int8 calibration. On the trained fixtures MinMax, Entropy and Percentile (99.999) gave the
# same held-out top-1 (onnxruntime's Entropy keeps 128 histogram bins for 128 quantized ones, which
# makes it MinMax); MinMax is the cheapest and keeps every calibrated value in range.
CALIBRATION_METHOD = "MinMax"
CALIBRATION_BATCH = 8  # images per calibration run of a dynamic-batch model
# ForceQuantizeNoInputCheck quantizes data-movement ops (the stem's channel Gather) even when their
# input is the float graph input, so they run on uint8 after one QuantizeLinear.
QUANTIZE_OPTIONS = {"ForceQuantizeNoInputCheck": True}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
FLOAT_OPS_RULE = ("ops of the written graph other than QuantizeLinear/DequantizeLinear whose float inputs do not all "
                  "come from a DequantizeLinear or whose output is not only read by a QuantizeLinear (the others "
                  "onnxruntime runs as integer kernels)")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, options: ArtifactOptions,
           calibration: np.ndarray | None = None, description: Description | None = None) -> ArtifactFacts:
    """Write `model` as an ONNX file at `path`, with `description` in its metadata (`describe`); returns its facts.
    The input is NCHW, or with `image_input` the model takes NHWC pixels (`program.ImageInput`).

    fp16 means fp16 weights with float32 compute (each weight is followed by a Cast to float32):
    half the file size with float32 inputs, outputs and arithmetic. A fully fp16 graph brings no
    speed on CPU (onnxruntime has no fp16 convolution kernels there and wraps each op in Casts) and
    loses accuracy where onnxruntime folds small layer-scale factors (timm starts them at 1e-5) into
    fp16 convolution weights, which then underflow.

    int8 is static post-training quantization calibrated on `calibration` (preprocessed NCHW images): see
    `_quantize`. The file keeps float32 input and output.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
    except ImportError:
        raise MissingExtraError("ONNX export", "onnx") from None

    input_name = IMAGE_INPUT_NAME if options.image_input else INPUT_NAME
    layout = "NHWC" if options.channels_last else "NCHW"
    program = export_program(model, example, options.dynamic_batch)
    model_proto = torch.onnx.export(program, dynamo=True, input_names=[input_name], output_names=[OUTPUT_NAME],
                                    opset_version=options.opset or DEFAULT_OPSET, verbose=False).model_proto
    _global_pools(model_proto)
    _explicit_gemm_biases(model_proto)
    if options.dynamic_batch:
        _name_batch_axis(model_proto)
    precision = options.precision_row
    if precision is FP16:
        _store_weights_in_fp16(model_proto)
    batch = -1 if options.dynamic_batch else example.shape[0]
    quantization = None
    if precision is INT8:
        quantization = _quantize(model_proto, path, calibration, None if options.dynamic_batch else batch,
                                 options.target_platform)
        model_proto = onnx.load(str(path))
    _for_older_runtimes(model_proto)
    # save_model keeps every weight inline, where torch.onnx.export(f=...) would default to a separate .onnx.data
    # file; these models are far below protobuf's 2 GiB limit for a single file.
    onnx.save_model(model_proto, path)
    onnx.checker.check_model(str(path), full_check=True)
    if description is not None:
        describe(path, description, layout)
    return ArtifactFacts(
        interface=Interface(input_name, layout, [batch, *example.shape[1:]], "float32", OUTPUT_NAME, "float32",
                            input_kind="image" if options.image_input else "tensor"),
        weights_dtype=precision.weights_dtype, compute_dtype=precision.compute_dtype,
        toolchain={package: metadata.version(package) for package in TOOLCHAIN}, quantization=quantization,
        details={"opset": next(entry.version for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx"))})


def _for_older_runtimes(model_proto) -> None:
    """Only the opset imports the graph uses (the int8 quantizer adds eight unused ones, ai.onnx.ml among them, which
    onnxruntime 1.17 refuses), and the lowest IR version those opsets allow (the exporter writes IR 10, which
    onnxruntime before 1.18 refuses: "Unsupported model IR version: 10, max supported IR version: 9")."""
    from onnx import helper

    used = {node.domain or "" for node in model_proto.graph.node}
    unused = [entry for entry in model_proto.opset_import if (entry.domain or "") not in used | {"ai.onnx"}]
    for entry in unused:
        model_proto.opset_import.remove(entry)
    model_proto.ir_version = helper.find_min_ir_version_for(list(model_proto.opset_import))


def describe(path: Path, description: Description, layout: str) -> None:
    """Write into the file what an app reads with `InferenceSession.get_modelmeta()`: a doc string saying what goes in
    and comes out, model version 1, and metadata_props `labels` (a JSON list, one name per class), `preprocessing`
    (JSON: resolution, crop_pct, interpolation, mean, std, layout, scale, normalised_in_model), `variant` and
    `mnv4_version`."""
    import onnx

    model_proto = onnx.load(str(path))
    classes = f"{len(description.labels)} classes, named in metadata 'labels'" if description.labels else "class logits"
    model_proto.doc_string = (f"MobileNetV4 {description.variant} exported by mnv4 {description.mnv4_version}. "
                              f"{description.input_text('float32', layout)} Output '{OUTPUT_NAME}': {classes} "
                              f"(softmax for probabilities).")
    model_proto.model_version = 1
    properties = {"variant": description.variant, "mnv4_version": description.mnv4_version,
                  "preprocessing": json.dumps(description.preprocessing_record(layout)),
                  **({"labels": json.dumps(description.labels)} if description.labels else {})}
    del model_proto.metadata_props[:]
    for key, value in properties.items():
        model_proto.metadata_props.add(key=key, value=value)
    onnx.save_model(model_proto, str(path))


def cpu_choice(target: str | None = None) -> dict:
    """onnxruntime's guidance for CPU inference ("Choosing parameters for CPU inference" in its
    quantization docs), by this CPU's integer dot-product instructions: x86 with VNNI takes uint8
    activations, int8 weights and the full 8-bit range; x86 without VNNI reduces the weights to 7
    bits (its u8 x s8 multiply-add pairs saturate at int16); ARM takes int8 activations and weights.
    With `target` (an ORT file's target platform, arm or amd64), for that platform's CPUs: this one's instructions
    where it is one of them; an amd64 target's unknown ones get the 7-bit weights that every x86 CPU computes right."""
    from ..cpu import int8_dot_product, is_arm

    arm = is_arm() if target is None else target == "arm"
    here = arm == is_arm()
    dot_product = int8_dot_product() if here else None
    if arm:
        return {"activations": "int8", "reduce_range": False,
                "cpu": dot_product or ("arm (no dot product)" if here else "arm target")}
    if dot_product:
        return {"activations": "uint8", "reduce_range": False, "cpu": dot_product}
    return {"activations": "uint8", "reduce_range": True, "cpu": "x86 without VNNI" if here else "amd64 target"}


def _quantize(model_proto, path: Path, calibration: np.ndarray, batch: int | None, target: str | None) -> Quantization:
    """Static int8 quantization of the float graph into `path`; returns what it did.

    quant_pre_process (onnxruntime's graph optimisation and shape inference) first, then quantize_static
    in QDQ format: int8 weights per output channel (symmetric, zero point 0), activations per tensor,
    their ranges calibrated by running the images through the float model. Before that, the stem's
    3 input channels are padded to 4 (`_pad_input_channels`), which takes onnxruntime's fast indirect
    int8 convolution instead of its im2col fallback. `batch` is the model's fixed batch (the images are
    then fed that many at a time, wrapping around), or None for a dynamic batch. `target`: see `cpu_choice`."""
    import onnx
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
    except ImportError:
        raise MissingExtraError("ONNX int8 export (onnxruntime)", "onnx") from None

    choice = cpu_choice(target)
    padded = _pad_input_channels(model_proto)
    reader = _calibration_reader(model_proto.graph.input[0].name, calibration, batch)
    with tempfile.TemporaryDirectory(prefix="mnv4-onnx-int8-") as scratch:
        float_path, prepared_path = Path(scratch) / "float.onnx", Path(scratch) / "prepared.onnx"
        onnx.save_model(model_proto, float_path)
        quant_pre_process(str(float_path), str(prepared_path))
        quantize_static(str(prepared_path), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=choice["reduce_range"],
                        activation_type=QuantType.QInt8 if choice["activations"] == "int8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod[CALIBRATION_METHOD],
                        extra_options=dict(QUANTIZE_OPTIONS))
    quantized, float_ops = _op_arithmetic(onnx.load(str(path)))
    activations = f"{choice['activations']} per tensor, asymmetric, {CALIBRATION_METHOD} over {len(calibration)} images"
    weights = "int8 per output channel, symmetric" + (" (7-bit range)" if choice["reduce_range"] else "")
    return Quantization(
        recipe=(f"onnxruntime quantize_static QDQ, weights {weights}, activations {activations}, "
                f"reduce_range {'on' if choice['reduce_range'] else 'off'} ({choice['cpu']})"),
        tool=f"onnxruntime {metadata.version('onnxruntime')} quantize_static", weights=weights, activations=activations,
        calibration={"images": int(len(calibration)), "method": CALIBRATION_METHOD},
        quantized_op_types=dict(quantized), float_ops=dict(float_ops), float_ops_rule=FLOAT_OPS_RULE,
        details={"format": "QDQ", "cpu": choice["cpu"], "activation_type": choice["activations"],
                 "reduce_range": choice["reduce_range"], "stem_channels_padded": padded})


def _calibration_reader(input_name: str, calibration: np.ndarray, batch: int | None):
    """onnxruntime's calibration data reader over the images: the model's own fixed batch at a time (the last
    one wrapping around to the first images), or CALIBRATION_BATCH of a dynamic one."""
    from onnxruntime.quantization import CalibrationDataReader

    images = np.ascontiguousarray(calibration, dtype=np.float32)
    step = batch or CALIBRATION_BATCH
    if batch is not None and len(images) % batch:
        images = np.resize(images, (-(-len(images) // batch) * batch, *images.shape[1:]))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(images), step))

        def get_next(self):
            start = next(self.batches, None)
            return None if start is None else {input_name: images[start:start + step]}

    return Reader()


def _explicit_gemm_biases(model_proto) -> None:
    """Give every Gemm its bias input. The exporter drops an all-zero bias (the classifier's, as initialised), and
    ONNX makes C optional, but strict runtimes do not: ONNX Runtime Web's WebGL backend fails on such a Gemm
    ("Uniform beta not found"). A zero bias adds nothing to the arithmetic."""
    from onnx import numpy_helper

    graph = model_proto.graph
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) > 2 or node.input[1] not in shapes:
            continue
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        columns = shapes[node.input[1]][0 if transposed else 1]
        bias = numpy_helper.from_array(np.zeros(columns, np.float32), node.input[1].removesuffix(".weight") + ".bias")
        graph.initializer.append(bias)
        node.input.append(bias.name)


def _global_pools(model_proto) -> None:
    """Write the head's spatial mean (ReduceMean over H and W, dims kept) as GlobalAveragePool, the same
    arithmetic. onnxruntime's CPU provider runs convolutions in a channel-blocked layout and has a blocked
    GlobalAveragePool, but no blocked ReduceMean: with ReduceMean it converts the last 7x7 feature map back
    to NCHW first, with GlobalAveragePool only the pooled vector (measured ~1 % faster on conv_small)."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    # Only the axes tensors are decoded, not every weight of the model.
    axes_names = {node.input[1] for node in graph.node if node.op_type == "ReduceMean" and len(node.input) > 1}
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer if tensor.name in axes_names}
    constants.update({node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                      if node.op_type == "Constant" and node.output[0] in axes_names
                      and node.attribute and node.attribute[0].name == "value"})
    for index, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        keepdims = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "keepdims"), 1)
        if keepdims == 1 and sorted(constants[node.input[1]].tolist()) == [2, 3]:
            graph.node.remove(node)
            graph.node.insert(index, helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                                      name=node.name))
    # An axes tensor no node reads any more would only bloat the file (and onnxruntime warns about it).
    used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _pad_input_channels(model_proto) -> bool:
    """Give the convolution that reads the graph input (the stem: 3 RGB channels) a 4th input channel
    with zero weights, fed by a Gather that repeats the last channel: the same arithmetic. onnxruntime's
    indirect int8 convolution needs a multiple of 4 input channels; with 3 it falls back to im2col
    and GEMM, which made the stem alone a third of the int8 model's time on conv_small (measured
    454 -> 200 us at 224 px). After quantization the Gather runs on the uint8 input."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    input_name = graph.input[0].name
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    index, node = next(((index, node) for index, node in enumerate(graph.node) if node.op_type == "Conv"
                        and node.input[0] == input_name and node.input[1] in initializers), (None, None))
    if node is None:
        return False
    group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
    weight = numpy_helper.to_array(initializers[node.input[1]])
    channels = weight.shape[1]
    extra = -channels % 4
    if group != 1 or extra == 0:
        return False
    padded = np.concatenate([weight, np.zeros((weight.shape[0], extra, *weight.shape[2:]), weight.dtype)], axis=1)
    initializers[node.input[1]].CopyFrom(numpy_helper.from_array(padded, node.input[1]))
    indices = numpy_helper.from_array(np.array([*range(channels), *[channels - 1] * extra], np.int64),
                                      f"{input_name}_channel_indices")
    graph.initializer.append(indices)
    gathered = f"{input_name}_4_channels"
    graph.node.insert(index, helper.make_node("Gather", [input_name, indices.name], [gathered],
                                              name=f"{input_name}_channel_gather", axis=1))
    node.input[0] = gathered
    return True


def _op_arithmetic(model_proto) -> tuple[Counter, Counter]:
    """(quantized, float) operator counts of a QDQ graph, by op type. An operator computes in int8 when
    each of its float inputs is a DequantizeLinear output and its output is read only by QuantizeLinear
    nodes (and is not a graph output): onnxruntime then fuses DequantizeLinear -> op -> QuantizeLinear
    into one integer kernel (QLinearConv, QLinearAdd, ...) or drops the pair around a data move. Integer
    inputs (indices, shapes) and absent optional inputs do not count."""
    from onnx import TensorProto

    graph = model_proto.graph
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    integer = {tensor.name for tensor in graph.initializer if tensor.data_type not in
               (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)}
    integer.update(output for node in graph.node if node.op_type in ("Shape", "Constant") for output in node.output
                   if node.op_type == "Shape" or all(a.t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16)
                                                    for a in node.attribute if a.name == "value"))
    graph_outputs = {output.name for output in graph.output}
    quantized, floating = Counter(), Counter()
    for node in graph.node:
        if node.op_type in _QDQ:
            continue
        inputs_quantized = all(name in integer or (name in producer and producer[name].op_type == "DequantizeLinear")
                               for name in node.input if name)
        outputs_quantized = all(name not in graph_outputs and consumers.get(name)
                                and all(reader.op_type == "QuantizeLinear" for reader in consumers[name])
                                for name in node.output if name)
        (quantized if inputs_quantized and outputs_quantized else floating)[node.op_type] += 1
    return quantized, floating


def _name_batch_axis(model_proto) -> None:
    """Call the dynamic batch axis `batch` instead of torch's symbol name (such as `s77`)."""
    graph = model_proto.graph
    symbol = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH_AXIS_NAME


def _store_weights_in_fp16(model_proto) -> None:
    """Replace each float32 weight initializer by a float16 one plus a Cast back to float32 under
    the weight's name, so the rest of the graph is unchanged. onnxruntime folds the Casts when it
    loads the model, so inference runs at float32 speed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    weight_names = {node.input[index] for node in graph.node
                    for index in _WEIGHT_INPUTS.get(node.op_type, ()) if index < len(node.input)}
    casts = []
    for initializer in graph.initializer:
        if initializer.name in weight_names and initializer.data_type == TensorProto.FLOAT:
            name = initializer.name
            half = numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16), f"{name}_fp16")
            initializer.CopyFrom(half)
            casts.append(helper.make_node("Cast", [half.name], [name], name=f"{name}_to_fp32",
                                          to=TensorProto.FLOAT))
    # The Casts go first so that the node list stays topologically sorted.
    nodes = casts + [node for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
