"""ONNX export: the shared torch.export program through torch's dynamo ONNX exporter, written as
one self-contained .onnx file and validated with the ONNX checker."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.formats import FORMATS
from ..errors import MissingExtraError
from .program import export_program

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH_AXIS_NAME = "batch"
TOOLCHAIN = ("torch", "onnx", "onnxscript")

# Which inputs of an op are weights. fp16 stores only these in half precision: they are nearly
# all of the file, while norm statistics, biases and layer-scale factors (values down to 1e-5)
# stay exact in float32.
_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp32",
           dynamic_batch: bool = False, nhwc: bool = False) -> dict:
    """Write `model` as an ONNX file at `path`; returns the facts for the manifest.

    fp16 means fp16 weights with float32 compute (each weight is followed by a Cast to float32):
    half the file size with float32 inputs, outputs and arithmetic. A fully fp16 graph brings no
    speed on CPU (onnxruntime has no fp16 convolution kernels there and wraps each op in Casts) and
    loses accuracy where onnxruntime folds small layer-scale factors (timm starts them at 1e-5) into
    fp16 convolution weights, which then underflow.
    """
    FORMATS["onnx"].check(precision=precision, nhwc=nhwc, dynamic_batch=dynamic_batch)
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
    except ImportError:
        raise MissingExtraError("ONNX export", "onnx") from None

    program = export_program(model, example, dynamic_batch)
    onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                     verbose=False)
    model_proto = onnx_program.model_proto
    _global_pools(model_proto)
    if dynamic_batch:
        _name_batch_axis(model_proto)
    if precision == "fp16":
        _store_weights_in_fp16(model_proto)
    # save_model keeps every weight inline, where torch.onnx.export(f=...) would default to a separate
    # .onnx.data file; these models are far below protobuf's 2 GiB limit for a single file.
    onnx.save_model(model_proto, path)
    onnx.checker.check_model(str(path), full_check=True)

    batch = -1 if dynamic_batch else example.shape[0]
    return {
        "toolchain": {package: metadata.version(package) for package in TOOLCHAIN},
        "input_name": INPUT_NAME,
        "input_layout": "NCHW",
        "input_shape": [batch, *example.shape[1:]],
        "input_dtype": "float32",
        "output_name": OUTPUT_NAME,
        "output_dtype": "float32",
        "opset": next(entry.version for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx")),
        "weights_dtype": "float16" if precision == "fp16" else "float32",
        "compute_dtype": "float32",
    }


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
