"""The reference stored beside every verified artifact, at `<artifact name>.reference.npz`: the verification
inputs and what the PyTorch model computes on them, in float32 and in float64 (the truth), and for mnv4's
trained fixture its held-out digits, their labels and PyTorch float32's logits on them.

With it `mnv4 verify` judges an artifact where PyTorch is not installed (`mnv4[runtime]`: a phone, a board, an
emulated ARM root) and reaches the verdict the model itself would: the same inputs, the same reference
numbers, the same rule (`parity.judge`). The manifest records the file's sha256, so a reference that is not
the one exported with the artifact is refused."""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MNV4Error, one_line
from . import schema
from .files import sha256, write_atomically

SUFFIX = ".reference.npz"


@dataclass(frozen=True)
class TaskReference:
    """A trained model's task: held-out images, their labels, PyTorch float32's logits on them."""

    name: str
    images: np.ndarray  # NCHW float32, normalised like the model's eval transform
    labels: np.ndarray  # int64
    pytorch_fp32: np.ndarray


@dataclass(frozen=True)
class Reference:
    inputs: np.ndarray  # the photos, then the random-pixel inputs: NCHW float32
    photos: int  # how many of the inputs are photos
    pytorch_fp32: np.ndarray  # PyTorch float32's logits on the inputs
    float64: np.ndarray  # the model in float64 on the same (float32) inputs: the truth
    task: TaskReference | None = None
    task_not_measured: dict | None = None  # why the fixture's accuracy means nothing at this resolution

    def write(self, artifact: str | Path) -> Path:
        """Write the reference of the artifact at `artifact` (beside it), atomically."""
        arrays = {"inputs": self.inputs, "pytorch_fp32": self.pytorch_fp32, "float64": self.float64}
        meta = {"photos": self.photos, "task_not_measured": self.task_not_measured,
                "task": self.task.name if self.task else None}
        if self.task:
            arrays.update(task_images=self.task.images, task_labels=self.task.labels,
                          task_pytorch_fp32=self.task.pytorch_fp32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
        return write_atomically(buffer.getvalue(), reference_path(artifact))

    def record(self, artifact: str | Path, written: str | Path) -> dict:
        """What the manifest of `artifact` says of its reference, `written` beside the file it was verified as."""
        return {"file": reference_path(artifact).name, "sha256": sha256(reference_path(written)),
                "inputs": {"photos": self.photos, "random": len(self.inputs) - self.photos},
                "task": self.task.name if self.task else None}


def reference_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


# The most a stored reference may hold: the verification inputs are a dozen images, the fixture's held-out split 449.
MAX_INPUTS, MAX_TASK_IMAGES = 1024, 100_000
_INPUT_ARRAYS = ("inputs", "pytorch_fp32", "float64")
_TASK_ARRAYS = ("task_images", "task_labels", "task_pytorch_fp32")


def read_reference(artifact: str | Path, manifest) -> Reference:
    """The stored reference of `artifact`, checked against its manifest: the file its record names by sha256, and
    arrays of the shapes and dtypes that manifest's model gives, checked from their headers before any is loaded."""
    artifact = Path(artifact)
    path = reference_path(artifact)
    recorded = manifest.reference
    if not recorded:
        raise MNV4Error(f"{artifact.name} has no stored reference (exported with --no-verify, or by an mnv4 before "
                        f"0.2): verify it where PyTorch is installed (pip install 'mnv4[torch]'), or export it again")
    if not path.is_file():
        raise MNV4Error(f"the stored reference of {artifact.name} is missing: expected {path} (copy it with the "
                        f"artifact and its manifest)")
    if sha256(path) != recorded["sha256"]:
        raise MNV4Error(f"{path} is not the reference exported with {artifact.name} (sha256 differs from the manifest's)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = schema.check(json.loads(str(stored["meta"])), _META, f"the stored reference {path} (meta)")
            count = _check_arrays(stored, meta["task"] is not None, manifest, path)
            if not 1 <= meta["photos"] <= count:
                raise MNV4Error(f"the stored reference {path} says {meta['photos']} of its {count} inputs are photos")
            task = TaskReference(meta["task"], stored["task_images"], stored["task_labels"],
                                 stored["task_pytorch_fp32"]) if meta["task"] else None
            return Reference(stored["inputs"], meta["photos"], stored["pytorch_fp32"], stored["float64"], task,
                             meta["task_not_measured"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, RecursionError) as error:
        raise MNV4Error(f"cannot read the stored reference {path}: {one_line(error)}") from None


_META = {"photos": schema.integer(1, MAX_INPUTS), "task": schema.NOTHING | schema.one_of(("digits",)),
         "task_not_measured": schema.NOTHING | schema.OBJECT}


def _check_arrays(stored, with_task: bool, manifest, path: Path) -> int:
    """Each array's shape and dtype from its header, against what the manifest's model gives; the number of inputs."""
    resolution, classes = manifest.resolution, manifest.num_classes
    headers = {name: _header(stored, name) for name in (*_INPUT_ARRAYS, *(_TASK_ARRAYS if with_task else ()))}
    count = headers["inputs"][0][0] if headers["inputs"][0] else 0
    task_count = headers["task_images"][0][0] if with_task and headers["task_images"][0] else 0
    expected = {"inputs": ((count, 3, resolution, resolution), "float32"), "pytorch_fp32": ((count, classes), "float32"),
                "float64": ((count, classes), "float64"),
                "task_images": ((task_count, 3, resolution, resolution), "float32"),
                "task_labels": ((task_count,), "int64"), "task_pytorch_fp32": ((task_count, classes), "float32")}
    if not 1 <= count <= MAX_INPUTS or task_count > MAX_TASK_IMAGES:
        raise MNV4Error(f"the stored reference {path} holds {count} inputs and {task_count} task images: not a reference")
    for name, (shape, dtype) in headers.items():
        if (shape, dtype) != expected[name]:
            raise MNV4Error(f"the stored reference {path} has {name} of shape {shape} ({dtype}) where {manifest.artifact}'s "
                            f"model gives {expected[name][0]} ({expected[name][1]}): it is not this artifact's reference")
    return count


def _header(stored, name: str) -> tuple[tuple, str]:
    """An array's shape and dtype, read from its .npy header without loading it."""
    with stored.zip.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return tuple(shape), np.dtype(dtype).name
