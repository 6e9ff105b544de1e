"""TFLite export through litert-torch, for the LiteRT interpreter."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..artifact.formats import FORMATS
from ..errors import MissingExtraError, MNV4Error
from .program import mobile_program

TOOLCHAIN = ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp32",
           dynamic_batch: bool = False, nhwc: bool = False) -> dict:
    """Write `model` as a .tflite file at `path`; returns the facts for the manifest.

    fp16 stores the convolution and linear weights in half precision and computes in float32
    (litert-torch's fp16 recipe: ai-edge-quantizer's float casting), so inputs and outputs stay
    float32. With `nhwc` the input is NHWC, as TFLite kernels and camera frames lay it out; the output
    is logits. With `dynamic_batch` the batch axis is -1 in the file and the interpreter resizes to
    any batch: litert-torch 0.10 writes every shape and reshape constant for the example's batch, so
    the model is converted at two batches and the sizes that follow the batch are freed (`free_batch`).
    """
    FORMATS["tflite"].check(precision=precision, nhwc=nhwc, dynamic_batch=dynamic_batch)
    try:
        import litert_torch
        from ai_edge_litert.interpreter import Interpreter
        from litert_torch.generative.quantize import quant_recipes
    except ImportError:
        raise MissingExtraError("TFLite export", "tflite") from None

    quant_config = quant_recipes.full_fp16_recipe() if precision == "fp16" else None
    # litert-torch prints its own progress on stdout, where it would corrupt `mnv4 export --json`.
    litert_torch.config.show_progress = False

    source = litert_torch.to_channel_last_io(model, args=[0]).eval() if nhwc else model.eval()

    def convert(sample: torch.Tensor) -> bytes:
        if nhwc:
            sample = sample.permute(0, 2, 3, 1).contiguous()
        module = source
        if dynamic_batch:
            # Attention's broadcast matmul as one bmm: litert-torch writes the broadcast as a BROADCAST_TO
            # whose shape holds the batch. (Not for fixed batches: at batch 1 litert-torch 0.10 turns that
            # bmm into a FULLY_CONNECTED that fails to prepare.)
            module = mobile_program(source, sample).module()
            # Traced in eval mode, but an exported module refuses .eval(), and litert-torch would report
            # it as "in training mode".
            module.training = False
        return litert_torch.convert(module, (sample,), quant_config=quant_config).model_content()

    flatbuffer = convert(example)
    if dynamic_batch:
        flatbuffer = free_batch(flatbuffer, convert(torch.cat([example, example[:1]])), len(example))
    path.write_bytes(flatbuffer)

    # Describe the input as the written file declares it.
    (model_input,) = Interpreter(model_path=str(path)).get_input_details()
    return {
        "toolchain": {package: metadata.version(package) for package in TOOLCHAIN},
        "input_name": model_input["name"],
        "input_layout": "NHWC" if nhwc else "NCHW",
        "input_shape": [int(size) for size in model_input["shape_signature"]],
        "input_dtype": model_input["dtype"].__name__,
        "output_dtype": "float32",
        "weights_dtype": "float16" if precision == "fp16" else "float32",
        "compute_dtype": "float32",
    }


def free_batch(at_batch: bytes, at_next_batch: bytes, batch: int) -> bytes:
    """The model converted at `batch` with its batch axis made free, given the same model converted at
    `batch + 1`.

    Comparing the two conversions op by op shows which sizes follow the batch: a tensor dimension
    that is k·batch in one and k·(batch + 1) in the other becomes -1 in the tensor's shape signature,
    and so does that entry of a RESHAPE's target-shape constant (the interpreter then infers it as
    k·B for any B). Any other difference, such as a broadcast shape, cannot be freed and is an error."""
    import flatbuffers

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
    builder = flatbuffers.Builder(len(at_batch) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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
