"""The JSON manifest that sits next to every artifact, at `<artifact path>.json`."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MNV4Error


def manifest_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_manifest(artifact: Path) -> dict:
    path = manifest_path(artifact)
    if not path.is_file():
        raise MNV4Error(f"no manifest for {artifact} (expected {path}); export it with `mnv4 export`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MNV4Error(f"manifest {path} is not valid JSON: {error}") from None
