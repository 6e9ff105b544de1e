"""TFLite metadata, the way TFLite Support's MetadataPopulator writes it, for MediaPipe Tasks' ImageClassifier and the
TFLite Task Library: a ModelMetadata flatbuffer (file identifier "M001") in a buffer that the model's metadata entry
"TFLITE_METADATA" names, and its associated files (labels.txt, preprocessing.json) in a zip appended to the model;
and the uint8 I/O that MediaPipe takes of an int8 model. mnv4.artifact.tflite_metadata reads it back."""
from __future__ import annotations

import io
import json
import zipfile

from ..artifact.tflite_metadata import (
    LABELS_FILE,
    METADATA_IDENTIFIER,
    METADATA_NAME,
    MIN_PARSER_VERSION,
    PREPROCESSING_FILE,
    text,
)
from ..errors import MNV4Error

# The input's pixel values: MediaPipe scales an image to (pixel - mean) / std of the NormalizationOptions, and mnv4's
# image-input models take 0..255 and normalize inside, so mean 0 and std 1.
PIXEL_RANGE = (0.0, 255.0)


def with_metadata(flatbuffer: bytes, *, name: str, description: str, version: str, author: str, license: str,
                  input_is_image: bool, labels: list[str] | None, preprocessing_json: str | None = None,
                  input_description: str = "", output_description: str = "") -> bytes:
    """`flatbuffer` (a .tflite model, its constants inside it) with TFLite metadata and associated files; any
    metadata and files it had are replaced, the rest of the model is kept as it is.

    With `input_is_image` the input is described as an RGB image (NHWC, batch 1, 3 channels): a float32 input takes
    pixels 0..255 (NormalizationOptions mean 0, std 1), a uint8 input the pixels themselves; MediaPipe takes no
    other input type. The output is described as features (class scores); `labels`, one name per class, become its
    TENSOR_AXIS_LABELS file labels.txt. `preprocessing_json` becomes the model's file preprocessing.json."""
    from ..artifact import tflite_metadata_schema_generated as meta
    from .tflite import _pack, _unpack

    model = _unpack(flatbuffer)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise MNV4Error(f"TFLite metadata is written for one input and one output, the model has {len(graph.inputs)} "
                        f"and {len(graph.outputs)}")
    image, logits = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    files = {}
    if labels is not None:
        files[LABELS_FILE] = _labels_text(labels, int(logits.shape[-1]))
    if preprocessing_json is not None:
        json.loads(preprocessing_json)  # a file apps parse: refuse what is not JSON here
        files[PREPROCESSING_FILE] = preprocessing_json.encode()

    subgraph = meta.SubGraphMetadataT()
    subgraph.name = "main"
    subgraph.inputTensorMetadata = [_input_metadata(meta, image, input_is_image, input_description)]
    subgraph.outputTensorMetadata = [_output_metadata(meta, output_description, labels is not None)]
    metadata = meta.ModelMetadataT()
    metadata.name, metadata.description, metadata.version = name, description, version
    metadata.author, metadata.license, metadata.minParserVersion = author, license, MIN_PARSER_VERSION
    metadata.subgraphMetadata = [subgraph]
    if preprocessing_json is not None:
        metadata.associatedFiles = [_associated_file(meta, PREPROCESSING_FILE, "How to preprocess images for the "
                                                     "input (JSON)", meta.AssociatedFileType.DESCRIPTIONS)]
    _set_metadata_buffer(model, _finish(metadata, METADATA_IDENTIFIER))
    return _append_files(_pack(model, len(flatbuffer)), files)


def _labels_text(labels: list[str], classes: int) -> bytes:
    if len(labels) != classes:
        raise MNV4Error(f"{len(labels)} labels for a model of {classes} classes")
    if any("\n" in label or "\r" in label for label in labels):
        raise MNV4Error("a label holds a line break; labels.txt has one name per line")
    return "".join(f"{label}\n" for label in labels).encode()


def _input_metadata(meta, tensor, input_is_image: bool, description: str):
    """The input's TensorMetadata: an RGB image whose pixels MediaPipe writes as the tensor's type takes them."""
    from ai_edge_litert import schema_py_generated as schema

    tensor_metadata = meta.TensorMetadataT()
    tensor_metadata.name, tensor_metadata.description = "image" if input_is_image else "input", description
    content = meta.ContentT()
    tensor_metadata.content = content
    if not input_is_image:
        content.contentPropertiesType, content.contentProperties = (meta.ContentProperties.FeatureProperties,
                                                                    meta.FeaturePropertiesT())
        return tensor_metadata
    if tensor.type not in (schema.TensorType.FLOAT32, schema.TensorType.UINT8) or len(tensor.shape) != 4 \
            or tensor.shape[-1] != 3:
        raise MNV4Error("an image input for MediaPipe is NHWC with 3 channels, float32 (pixels 0..255) or uint8")
    content.contentPropertiesType = meta.ContentProperties.ImageProperties
    content.contentProperties = meta.ImagePropertiesT()
    content.contentProperties.colorSpace = meta.ColorSpaceType.RGB
    if tensor.type == schema.TensorType.FLOAT32:
        # MediaPipe requires NormalizationOptions for a float input; mean 0, std 1 hands the model plain pixels.
        normalization = meta.ProcessUnitT()
        normalization.optionsType = meta.ProcessUnitOptions.NormalizationOptions
        normalization.options = meta.NormalizationOptionsT()
        normalization.options.mean, normalization.options.std = [0.0], [1.0]
        tensor_metadata.processUnits = [normalization]
    stats = meta.StatsT()
    stats.min, stats.max = [PIXEL_RANGE[0]], [PIXEL_RANGE[1]]
    tensor_metadata.stats = stats
    return tensor_metadata


def _output_metadata(meta, description: str, labelled: bool):
    tensor_metadata = meta.TensorMetadataT()
    tensor_metadata.name, tensor_metadata.description = "logits", description
    tensor_metadata.content = meta.ContentT()
    tensor_metadata.content.contentPropertiesType = meta.ContentProperties.FeatureProperties
    tensor_metadata.content.contentProperties = meta.FeaturePropertiesT()
    if labelled:
        tensor_metadata.associatedFiles = [_associated_file(meta, LABELS_FILE, "The name of each class, one per line",
                                                            meta.AssociatedFileType.TENSOR_AXIS_LABELS)]
    return tensor_metadata


def _associated_file(meta, name: str, description: str, file_type: int):
    associated = meta.AssociatedFileT()
    associated.name, associated.description, associated.type = name, description, file_type
    return associated


def _finish(table, identifier: bytes) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(table.Pack(builder), file_identifier=identifier)
    return bytes(builder.Output())


def _set_metadata_buffer(model, data: bytes) -> None:
    """Point the model's TFLITE_METADATA entry at a buffer holding `data`: the entry's own buffer when it has one
    (as the populator replaces it), else a new buffer and entry."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    entries = [entry for entry in model.metadata or [] if text(entry.name) == METADATA_NAME]
    if entries:
        model.buffers[entries[0].buffer] = buffer
        return
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]


def _append_files(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `files` in a zip after it, as the populator appends them (zipfile's append mode on the model
    file, stored uncompressed), which MediaPipe's and the Task Library's metadata extractors read. The entries carry
    a fixed date, so that the same model and files make the same bytes."""
    if not files:
        return model_bytes
    stream = io.BytesIO(model_bytes)
    stream.seek(0, io.SEEK_END)
    with zipfile.ZipFile(stream, "a") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return stream.getvalue()


def uint8_io(flatbuffer: bytes) -> bytes:
    """An int8-I/O model (int8 input and output, as `quantize_static(..., int8_io=True)` writes it) with uint8 input
    and output, which MediaPipe takes (it refuses int8 tensors at either end), written as TFLite's converter writes
    inference_input_type and inference_output_type uint8: a QUANTIZE (uint8 to int8) in front, one (int8 to uint8)
    behind. The uint8 input has scale 1 and zero point 0, the pixels 0..255 themselves, since MediaPipe writes them
    so whatever the file's parameters; the uint8 output keeps the int8 output's scale, its zero point shifted by 128,
    so its requantization is exact."""
    from ai_edge_litert import schema_py_generated as schema

    from .tflite import _pack, _unpack

    model = _unpack(flatbuffer)
    graph = model.subgraphs[0]
    (old_input,), (old_output,) = graph.inputs, graph.outputs
    if {graph.tensors[old_input].type, graph.tensors[old_output].type} != {schema.TensorType.INT8}:
        raise MNV4Error("uint8 I/O is made from a model with int8 input and output (int8_io)")
    new_input = _retyped_copy(graph, old_input, 1.0, 0)
    output_quantization = graph.tensors[old_output].quantization
    new_output = _retyped_copy(graph, old_output, float(output_quantization.scale[0]),
                               int(output_quantization.zeroPoint[0]) + 128)
    quantize = _quantize_opcode(model)
    graph.operators = [_op(quantize, new_input, old_input), *graph.operators, _op(quantize, old_output, new_output)]
    graph.inputs, graph.outputs = [new_input], [new_output]
    # The signature names the graph's I/O by tensor index; LiteRT's signature runner reads it.
    for signature in model.signatureDefs or []:
        for entry in signature.inputs or []:
            entry.tensorIndex = new_input if entry.tensorIndex == old_input else entry.tensorIndex
        for entry in signature.outputs or []:
            entry.tensorIndex = new_output if entry.tensorIndex == old_output else entry.tensorIndex
    return _pack(model, len(flatbuffer))


def _retyped_copy(graph, index: int, scale: float, zero_point: int) -> int:
    """A new uint8 tensor shaped like tensor `index`, which takes over its name (the inner one gets "_int8"); its index."""
    import copy

    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    old = graph.tensors[index]
    tensor = copy.deepcopy(old)
    tensor.type, tensor.buffer = schema.TensorType.UINT8, 0  # buffer 0: the empty one, as for every activation
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale = np.array([scale], np.float32)
    tensor.quantization.zeroPoint = np.array([zero_point], np.int64)
    old.name = f"{text(old.name)}_int8"
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _quantize_opcode(model) -> int:
    from ai_edge_litert import schema_py_generated as schema

    code = schema.BuiltinOperator.QUANTIZE
    for index, opcode in enumerate(model.operatorCodes):
        if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == code and opcode.version >= 2:
            return index
    opcode = schema.OperatorCodeT()
    # Version 2: QUANTIZE with int8 on one side (TFLite's op_version.cc); both fields, for old and new readers.
    opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, code, 2
    model.operatorCodes.append(opcode)
    return len(model.operatorCodes) - 1


def _op(opcode_index: int, source: int, target: int):
    from ai_edge_litert import schema_py_generated as schema

    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode_index, [source], [target]
    return op
