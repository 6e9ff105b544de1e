"""What an artifact is, below every toolchain and runtime: the tables of formats, precisions and export options,
the facts an exporter records, the manifest beside each artifact, the parity rule that proves it, and the file
helpers that publish it. Imports no torch."""
from .files import artifact_bytes, remove_artifact, sha256
from .formats import FORMATS, Format, format_of, get_format
from .manifest import Manifest, manifest_path, read_manifest
from .options import OPTIONS, ArtifactOptions, ExportRequest
from .parity import Parity, breaches, compare, judge, verification_inputs
from .precisions import PRECISIONS, Limits, Precision, limits_for
from .reference import Reference, read_reference

__all__ = ["FORMATS", "OPTIONS", "PRECISIONS", "ArtifactOptions", "ExportRequest", "Format", "Limits", "Manifest",
           "Parity", "Precision", "Reference", "artifact_bytes", "breaches", "compare", "format_of", "get_format",
           "judge", "limits_for", "manifest_path", "read_manifest", "read_reference", "remove_artifact", "sha256",
           "verification_inputs"]
