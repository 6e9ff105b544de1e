"""The manifest beside every artifact, at `<artifact path>.json`: one typed object, written and read here
alone, and validated on read so that a damaged or foreign manifest is an error naming the file and the key.

The JSON is flat: the fields below, then what the format's exporter recorded (`facts.ArtifactFacts`: input and
output names, layout, shape and dtypes, quantization, delegation, opset, ...), then `parity`, then `integrity`.

Schema 2 (mnv4 0.2) gave the exporters' records one form: `quantization` has the same keys in every format
(`calibration.images` where schema 1 had `calibration_images` or nothing), with what only one format records under
`quantization.details`; every interface has `input_kind` and `output_name`. And it has `integrity`: the sha256 of
everything else in the manifest, as the export wrote it, so that a manifest changed since (its preprocessing, its
variant, its labels: what changes an answer) is refused unless the user says to take it as it is. Schema 1 manifests,
which have no such record, are read on the same terms as a changed one."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..data import INTERPOLATIONS, Preprocessing
from ..errors import MNV4Error
from . import schema
from .files import companion_paths, manifest_path, read_json, sha256, write_json_atomically
from .formats import FORMATS
from .options import MAX_BATCH, MAX_CLASSES, MAX_RESOLUTION, MIN_RESOLUTION
from .parity import DYNAMIC_VERIFY_BATCHES
from .precisions import ARTIFACT_PRECISIONS, Limits, limits_for
from .reference import MAX_INPUTS

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
DYNAMIC = "dynamic"  # the manifest's batch of an artifact whose batch axis is free
CHANGED = ("pass --allow-modified to use it as it is, or export it again")


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
    companions: dict | None = None  # the files its exporter wrote beside it, by name: file, sha256 (formats.companions)
    facts: dict = field(default_factory=dict)  # the exporter's record of the artifact's interface
    parity: dict = field(default_factory=dict)
    schema: int = SCHEMA
    modified: list[str] = field(default_factory=list)  # read: how it differs from what its export wrote

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
        return sealed({**document, **self.facts, "parity": self.parity})

    def write(self, path: str | Path) -> Path:
        """Write the manifest of the artifact at `path` (beside it)."""
        return write_json_atomically(self.as_dict(), manifest_path(path))

    @classmethod
    def from_dict(cls, document: object, source: str) -> Manifest:
        """The manifest of a document that follows the schema (else a one-line MNV4Error naming `source` and the
        key); `modified` says what differs from what its export wrote."""
        where = f"manifest {source}"
        schema.check(document, {"schema": schema.integer()}, where)
        if document["schema"] not in READABLE_SCHEMAS:
            raise MNV4Error(f"{where} has schema {document['schema']!r}; this mnv4 reads schemas "
                            f"{' and '.join(map(str, READABLE_SCHEMAS))}")
        schema.check(document, _FIELDS, where, optional=_OPTIONAL)
        _check_parts(document, where)
        named = {f.name for f in fields(cls)} - _NOT_TOP_LEVEL
        return cls(**{key: document[key] for key in named if key in document},
                   facts={key: value for key, value in document.items()
                          if key not in named | _NOT_TOP_LEVEL | {"integrity"}},
                   parity=document.get("parity", {}), schema=document["schema"], modified=_changes(document))


_NOT_TOP_LEVEL = {"facts", "parity", "schema", "modified"}


def integrity_of(document: dict) -> str:
    """The sha256 of a manifest document without its integrity record, in JSON's canonical form."""
    canonical = json.dumps({key: value for key, value in document.items() if key != "integrity"}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sealed(document: dict) -> dict:
    """`document` with its integrity record."""
    return {**document, "integrity": integrity_of(document)}


def _changes(document: dict) -> list[str]:
    if "integrity" not in document:
        return ["it has no integrity record (an mnv4 before 0.2 wrote it)"]
    if document["integrity"] != integrity_of(document):
        return ["it was changed after export (its integrity record does not match what it says)"]
    return []


_TEXT = schema.text(256)
_FIELDS = {
    "format": schema.one_of(FORMATS),
    "artifact": _TEXT,
    "sha256": schema.SHA256,
    "bytes": schema.integer(0),
    "variant": _TEXT,
    "resolution": schema.integer(MIN_RESOLUTION, MAX_RESOLUTION),
    "batch": schema.one_of([DYNAMIC]) | schema.integer(1, MAX_BATCH),
    "precision": schema.one_of(ARTIFACT_PRECISIONS),
    "num_classes": schema.integer(1, MAX_CLASSES),
    "preprocessing": schema.OBJECT,
    "weights": schema.OBJECT,
    "versions": schema.OBJECT,
    "export_seconds": schema.number(0),
    "labels": schema.NOTHING | schema.list_of(_TEXT, most=MAX_CLASSES),
    "calibration": schema.NOTHING | schema.OBJECT,
    "model": schema.NOTHING | schema.OBJECT,
    "reference": schema.NOTHING | schema.OBJECT,
    "companions": schema.NOTHING | schema.OBJECT,
    "compute_dtype": schema.one_of(("float32", "float16", "int8")),
    "parity": schema.OBJECT,
    "integrity": schema.SHA256,
}
_OPTIONAL = ("labels", "calibration", "model", "reference", "companions", "compute_dtype", "parity", "integrity")
_PREPROCESSING = {
    "crop_pct": schema.number(high=1, above=0),
    "interpolation": schema.one_of(INTERPOLATIONS),
    "mean": schema.list_of(schema.number(-10, 10), length=3),
    "std": schema.list_of(schema.number(high=10, above=1e-6), length=3),
}
_WEIGHTS = {"kind": schema.one_of(("checkpoint", "seeded-calibrated"))}
_CHECKPOINT = {"path": schema.text(), "sha256": schema.SHA256}
_SEEDED = {"seed": schema.integer(0, 2**32 - 1)}
_REFERENCE = {"file": _TEXT, "sha256": schema.SHA256, "inputs": schema.OBJECT}
_INPUTS = {"photos": schema.integer(1, MAX_INPUTS), "random": schema.integer(0, MAX_INPUTS)}
_COMPANION = {"file": _TEXT, "sha256": schema.SHA256}


def _check_parts(document: dict, where: str) -> None:
    """The fields inside the fields that mnv4 computes with: preprocessing, weights, the stored reference, labels."""
    schema.check(document["preprocessing"], _PREPROCESSING, f"{where} (preprocessing)")
    schema.check(document["weights"], _WEIGHTS, f"{where} (weights)")
    schema.check(document["weights"], _CHECKPOINT if document["weights"]["kind"] == "checkpoint" else _SEEDED,
                 f"{where} (weights)", optional=tuple(_SEEDED))
    if document.get("reference") is not None:
        schema.check(document["reference"], _REFERENCE, f"{where} (reference)")
        schema.check(document["reference"]["inputs"], _INPUTS, f"{where} (reference inputs)")
    for name, companion in (document.get("companions") or {}).items():
        schema.check(companion, _COMPANION, f"{where} (companion {name!r})")
    labels = document.get("labels")
    if labels is not None and len(labels) != document["num_classes"]:
        raise MNV4Error(f"{where} has a bad value for 'labels': {len(labels)} names for {document['num_classes']} "
                        f"classes")


def read_manifest(artifact: str | Path, allow_modified: bool = False) -> Manifest:
    """The validated manifest of an artifact that exists and is of the format its manifest says. A manifest changed
    since its export (or too old to tell) is refused unless `allow_modified`; then `modified` says how."""
    artifact = Path(artifact)
    if not (artifact.exists() or artifact.is_symlink()):
        raise MNV4Error(f"artifact not found: {artifact}")
    path = manifest_path(artifact)
    if not path.is_file():
        raise MNV4Error(f"no manifest for {artifact} (expected {path}); export it with `mnv4 export`")
    manifest = Manifest.from_dict(read_json(path, "manifest"), str(path))
    if FORMATS[manifest.format].suffix != artifact.suffix:
        raise MNV4Error(f"manifest {path} is for format {manifest.format} (*{FORMATS[manifest.format].suffix}), "
                        f"which {artifact.name} is not")
    if manifest.modified and not allow_modified:
        raise MNV4Error(f"manifest {path}: {manifest.modified[0]}; {CHANGED}")
    return manifest


def _changed_companions(artifact: Path, manifest: Manifest) -> list[str]:
    """How the files its exporter wrote beside the artifact (named by its format, not by the manifest) differ from
    the manifest's record of them: ncnn's weights are one, which its runtime reads."""
    changes = []
    for name, path in companion_paths(artifact).items():
        record = (manifest.companions or {}).get(name)
        if record is None:
            changes.append(f"the manifest has no record of {path.name} ({name}), which its export writes")
        elif not path.is_file():
            changes.append(f"{path} ({name}), written beside {artifact.name} by its export, is not there")
        elif sha256(path) != record["sha256"]:
            changes.append(f"{path} ({name}) is not the file the manifest describes (sha256 differs): it changed "
                           f"after export")
    return changes


def unchanged(artifact: str | Path, manifest: Manifest, allow_modified: bool = False) -> list[str]:
    """Refuse an artifact or a manifest that differs from what its export wrote (the artifact's sha256 covers every
    file its runtime reads), unless `allow_modified`; then the differences, for warnings."""
    changes = [f"manifest {manifest_path(artifact)}: {change}" for change in manifest.modified]
    if sha256(artifact) != manifest.sha256:
        changes.append(f"{artifact} is not the artifact its manifest describes (sha256 differs): it changed after "
                       f"export")
    changes += _changed_companions(Path(artifact), manifest)
    if changes and not allow_modified:
        raise MNV4Error(f"{changes[0]}; {CHANGED}")
    return changes
