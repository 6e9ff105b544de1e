"""What an artifact is, below every toolchain and runtime: the one table of formats, the manifest beside
each artifact, the parity rule that proves it, and the file helpers that publish it. Imports no torch."""
from .files import artifact_bytes, remove_artifact, sha256
from .formats import FORMATS, PRECISIONS, Format, format_of, get_format
from .manifest import Manifest, manifest_path, read_manifest
from .parity import Parity, breaches, compare, judge, tolerance_for, verification_inputs
from .reference import Reference, read_reference

__all__ = ["FORMATS", "PRECISIONS", "Format", "Manifest", "Parity", "Reference", "artifact_bytes", "breaches", "compare",
           "format_of", "get_format", "judge", "manifest_path", "read_manifest", "read_reference", "remove_artifact",
           "sha256", "tolerance_for", "verification_inputs"]
