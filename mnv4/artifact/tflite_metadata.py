"""The TFLite metadata a .tflite file may carry (TFLite Support's schema, which MediaPipe Tasks and the TFLite Task
Library read; mnv4.export.tflite_metadata writes it): what it is called, where it lives, and `read_metadata` for
apps and runners. Imports no torch; reading needs ai-edge-litert and the flatbuffers it requires.

The schema's Python API, tflite_metadata_schema_generated.py, is flatc's output for TFLite Support's
metadata_schema.fbs (scripts/generate_tflite_metadata_schema.sh). MediaPipe ships the same module, but importing it
imports all of MediaPipe, a consumer mnv4 is tested against, not a dependency of export or of the runtime install."""
from __future__ import annotations

import io
import json
import zipfile

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry that holds the ModelMetadata flatbuffer
METADATA_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
PREPROCESSING_FILE = "preprocessing.json"
# What the fields mnv4 writes need of a metadata parser: all are in schema 1.0.0, the version TFLite Support's
# populator computes for them (metadata_version.cc); parsers refuse a file whose min_parser_version is above theirs,
# which is why the preprocessing is an associated file rather than CustomMetadata (1.5.0).
MIN_PARSER_VERSION = "1.0.0"


def text(value) -> str:
    """A flatbuffer string as str (the object API gives bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(model_bytes: bytes) -> dict | None:
    """What a .tflite file's TFLite metadata says: name, description, version, author, license, min_parser_version,
    and `labels` (the output's TENSOR_AXIS_LABELS file, a list) and `preprocessing` (preprocessing.json, parsed) where
    the file has them; None for a file without metadata."""
    from ai_edge_litert import schema_py_generated as schema

    from . import tflite_metadata_schema_generated as meta

    model = schema.Model.GetRootAs(model_bytes, 0)
    for index in range(model.MetadataLength()):
        if text(model.Metadata(index).Name()) == METADATA_NAME:
            data = model.Buffers(model.Metadata(index).Buffer()).DataAsNumpy().tobytes()
            break
    else:
        return None
    metadata = meta.ModelMetadataT.InitFromPackedBuf(data, 0)
    fields = {"name": metadata.name, "description": metadata.description, "version": metadata.version,
              "author": metadata.author, "license": metadata.license, "min_parser_version": metadata.minParserVersion}
    result = {key: text(value) for key, value in fields.items() if value is not None}
    files = _packed_files(model_bytes)
    (subgraph,) = metadata.subgraphMetadata
    for associated in subgraph.outputTensorMetadata[0].associatedFiles or []:
        if associated.type == meta.AssociatedFileType.TENSOR_AXIS_LABELS and text(associated.name) in files:
            result["labels"] = files[text(associated.name)].decode().splitlines()
    if PREPROCESSING_FILE in files:
        result["preprocessing"] = json.loads(files[PREPROCESSING_FILE])
    return result


def _packed_files(model_bytes: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}
