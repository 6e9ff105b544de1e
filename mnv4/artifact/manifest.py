"""The manifest beside every artifact, at `<artifact path>.json`: one typed object, written and read here
alone, and validated on read so that a damaged or foreign manifest is an error naming the file and the key.

The JSON is flat: the fields below, then what the format's exporter recorded (`facts.ArtifactFacts`: input and
output names, layout, shape and dtypes, quantization, delegation, opset, ...), then `parity`.

Schema 2 (mnv4 0.2) gave the exporters' records one form: `quantization` has the same keys in every format
(`calibration.images` where schema 1 had `calibration_images` or nothing), with what only one format records under
`quantization.details`; every interface has `input_kind` and `output_name`. Reading needs none of that, so schema 1
manifests are still read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..data import Preprocessing
from ..errors import MNV4Error
from .files import manifest_path, write_json_atomically
from .formats import FORMATS
from .parity import DYNAMIC_VERIFY_BATCHES
from .precisions import ARTIFACT_PRECISIONS, Limits, limits_for

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
DYNAMIC = "dynamic"  # the manifest's batch of an artifact whose batch axis is free


@dataclass
class Manifest:
    format: str
    artifact: str  # the artifact's file name (the manifest sits beside it)
    sha256: str
    bytes: int
    variant: str
    resolution: int
    batch: int | str  # a fixed batch size, or DYNAMIC
    precision: str
    num_classes: int
    preprocessing: dict  # crop_pct, interpolation, mean, std: timm's eval transform
    weights: dict  # kind "checkpoint" (path, sha256) or "seeded-calibrated" (seed, logit scale)
    versions: dict
    export_seconds: float
    labels: list[str] | None = None  # class names (`--labels`); None: ImageNet's for 1000 classes
    calibration: dict | None = None  # int8: the calibration images' source, count and names
    model: dict | None = None  # params, and MACs per image at this resolution
    reference: dict | None = None  # the stored reference beside it (file, sha256, inputs); None: not verified
    facts: dict = field(default_factory=dict)  # the exporter's record of the artifact's interface
    parity: dict = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def dynamic_batch(self) -> bool:
        return self.batch == DYNAMIC

    @property
    def compute_dtype(self) -> str | None:
        return self.facts.get("compute_dtype")

    @property
    def limits(self) -> Limits:
        """The parity limits this artifact is held to."""
        return limits_for(self.precision, self.compute_dtype)

    @property
    def verify_batches(self) -> tuple[int, ...]:
        return DYNAMIC_VERIFY_BATCHES if self.dynamic_batch else (self.batch,)

    def preprocessing_spec(self) -> Preprocessing:
        pre = self.preprocessing
        return Preprocessing(self.resolution, pre["crop_pct"], pre["interpolation"], tuple(pre["mean"]),
                             tuple(pre["std"]))

    def as_dict(self) -> dict:
        document = {"schema": self.schema}
        document.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_TOP_LEVEL})
        return {**document, **self.facts, "parity": self.parity}

    def write(self, path: str | Path) -> Path:
        """Write the manifest of the artifact at `path` (beside it)."""
        return write_json_atomically(self.as_dict(), manifest_path(path))

    @classmethod
    def from_dict(cls, document: object, source: str) -> Manifest:
        if not isinstance(document, dict):
            raise MNV4Error(f"manifest {source} is not a JSON object")
        for key, check in _CHECKS.items():
            if key not in document:
                raise MNV4Error(f"manifest {source} is missing the key {key!r}")
            if not check(document[key]):
                raise MNV4Error(f"manifest {source} has a bad value for {key!r}: {document[key]!r}")
        for key in _PREPROCESSING_KEYS:
            if key not in document["preprocessing"]:
                raise MNV4Error(f"manifest {source} is missing the key 'preprocessing.{key}'")
        labels = document.get("labels")
        if labels is not None and not (isinstance(labels, list) and len(labels) == document["num_classes"]
                                       and all(isinstance(name, str) for name in labels)):
            raise MNV4Error(f"manifest {source} has a bad value for 'labels': not {document['num_classes']} names")
        if document["schema"] not in READABLE_SCHEMAS:
            raise MNV4Error(f"manifest {source} has schema {document['schema']!r}; this mnv4 reads schemas "
                            f"{' and '.join(map(str, READABLE_SCHEMAS))}")
        named = {f.name for f in fields(cls)} - _NOT_TOP_LEVEL
        return cls(**{key: document[key] for key in named if key in document},
                   facts={key: value for key, value in document.items() if key not in named | _NOT_TOP_LEVEL},
                   parity=document.get("parity", {}), schema=document["schema"])


_NOT_TOP_LEVEL = {"facts", "parity", "schema"}
_PREPROCESSING_KEYS = ("crop_pct", "interpolation", "mean", "std")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_CHECKS = {
    "schema": lambda v: isinstance(v, int),
    "format": lambda v: v in FORMATS,
    "artifact": lambda v: isinstance(v, str) and bool(v),
    "sha256": lambda v: isinstance(v, str) and len(v) == 64,
    "bytes": lambda v: isinstance(v, int) and v >= 0,
    "variant": lambda v: isinstance(v, str),
    "resolution": _positive_int,
    "batch": lambda v: v == DYNAMIC or _positive_int(v),
    "precision": lambda v: v in ARTIFACT_PRECISIONS,
    "num_classes": _positive_int,
    "preprocessing": lambda v: isinstance(v, dict),
    "weights": lambda v: isinstance(v, dict) and isinstance(v.get("kind"), str),
    "versions": lambda v: isinstance(v, dict),
    "export_seconds": lambda v: isinstance(v, (int, float)),
}


def read_manifest(artifact: str | Path) -> Manifest:
    """The validated manifest of an artifact that exists and is of the format its manifest says."""
    artifact = Path(artifact)
    if not (artifact.exists() or artifact.is_symlink()):
        raise MNV4Error(f"artifact not found: {artifact}")
    path = manifest_path(artifact)
    if not path.is_file():
        raise MNV4Error(f"no manifest for {artifact} (expected {path}); export it with `mnv4 export`")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MNV4Error(f"manifest {path} is not valid JSON: {error}") from None
    except OSError as error:
        raise MNV4Error(f"cannot read manifest {path}: {error.strerror or error}") from None
    manifest = Manifest.from_dict(document, str(path))
    if FORMATS[manifest.format].suffix != artifact.suffix:
        raise MNV4Error(f"manifest {path} is for format {manifest.format} (*{FORMATS[manifest.format].suffix}), "
                        f"which {artifact.name} is not")
    return manifest
