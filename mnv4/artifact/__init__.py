"""What an artifact is, below every toolchain and runtime: the one table of formats, the manifest beside
each artifact, the parity rule that proves it, and the file helpers that publish it. Imports no torch."""
from .files import artifact_bytes, remove_artifact, sha256
from .formats import FORMATS, PRECISIONS, Format, format_of, get_format
from .manifest import Manifest, manifest_path, read_manifest
from .parity import Parity, breaches, compare, tolerance_for, verification_inputs, verify

__all__ = ["FORMATS", "PRECISIONS", "Format", "Manifest", "Parity", "artifact_bytes", "breaches", "compare",
           "format_of", "get_format", "manifest_path", "read_manifest", "remove_artifact", "sha256",
           "tolerance_for", "verification_inputs", "verify"]
