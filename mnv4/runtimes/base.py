"""The one interface every runtime implements: an artifact path and a thread count in,
a callable from an NCHW float32 batch to float32 logits out."""
from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..artifact.formats import LAYOUTS
from ..artifact.manifest import read_manifest
from ..data import pixels_of
from ..errors import DamagedArtifactError, MNV4Error, one_line


class Runner(ABC):
    """Runs one exported artifact in its own runtime.

    Subclasses set ``runtime`` (a short name such as ``"onnxruntime"``) and implement ``run``.
    Callers always pass NCHW float32; a runner whose artifact takes NHWC transposes internally,
    so the harness never needs to know the artifact's layout.
    """

    runtime: str = ""
    # False for a runner whose speed says nothing of the runtime's (an interpreter standing in for it).
    measures_latency: bool = True
    # Set where the runtime was asked to compute in another precision than the artifact's own ("float16": LiteRT's
    # xnnpack_fp16), which decides the parity limits (precisions.limits_for); None: as the manifest records.
    compute_dtype: str | None = None

    # The artifact's input (channels, height, width) as NCHW, where its file says; set by each runner, for the check
    # of what it is given.
    input_size: tuple[int, int, int] | None = None
    # Set by a runner whose artifact takes RGB pixels (an image input, normalised inside the model): it is given the
    # normalised batch all the same, and feeds the pixels it came from (data.pixels_of), so that parity covers the
    # model's own normalisation.
    image_input: bool = False

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        # (mean, std) an image input's pixels are recovered with: given (`load(normalisation=)`, where the manifest is
        # not yet written), else read from the manifest beside the artifact on first use.
        self.normalisation: tuple | None = None

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Map an NCHW float32 batch to a (batch, classes) float32 array of logits."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(self.checked(batch))

    def checked(self, batch: np.ndarray) -> np.ndarray:
        """`batch` as `run` takes it, or refused: a contiguous NCHW float32 array of the artifact's input size (for an
        image input, the pixels it came from)."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or not len(batch) or (self.input_size and batch.shape[1:] != self.input_size):
            expected = ", ".join(map(str, self.input_size or ("C", "H", "W")))
            raise MNV4Error(f"{self.path.name or self.runtime} takes NCHW batches of shape (N, {expected}), not an "
                            f"array of shape {batch.shape}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return pixels_of(batch, *self._normalisation()) if self.image_input else batch

    def _normalisation(self) -> tuple:
        if self.normalisation is None:
            try:
                # What the command's own check allowed (an edited manifest with --allow-modified) is taken as it is.
                preprocessing = read_manifest(self.path, allow_modified=True).preprocessing
            except MNV4Error as error:
                raise MNV4Error(f"{self.path.name} takes RGB pixels: the mean and std its inputs were normalised with "
                                f"come from its manifest ({error})") from None
            self.normalisation = (preprocessing["mean"], preprocessing["std"])
        return self.normalisation

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around the runtime's own call: what it raises there is the artifact's (or its runtime's) failure, a
        DamagedArtifactError naming the file, not a bug of mnv4's."""
        try:
            yield
        except MNV4Error:
            raise
        except Exception as error:  # whatever the runtime raises
            raise DamagedArtifactError(f"{self.runtime} cannot run {self.path.name}: {one_line(error)}") from None

    def close(self) -> None:  # noqa: B027 (a default that runners outside this process override)
        """Release what the runtime holds outside this process (a browser and its server); in-process runtimes hold
        nothing there."""

    def execution(self) -> dict:
        """What the runtime did with the artifact, as far as it tells (its delegate and whether that took the
        whole graph, its execution providers), for the records: numbers from another kernel than intended are
        not the ones a report claims."""
        return {}


def input_size(input_shape, layout: str) -> tuple[int, int, int] | None:
    """(channels, height, width) of an NCHW or NHWC input shape, where all three are fixed numbers."""
    sizes = (input_shape[3], input_shape[1], input_shape[2]) if layout == "NHWC" else tuple(input_shape[1:4])
    return tuple(int(s) for s in sizes) if all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes) else None


def artifact_layout(input_shape, layout: str | None) -> str:
    """The artifact's input layout: `layout` when given, else read from its input shape, where the
    channel axis is the one of size 3 (an image is never 3 pixels high)."""
    if layout is None:
        return "NHWC" if input_shape[-1] == 3 and input_shape[1] != 3 else "NCHW"
    if layout not in LAYOUTS:
        raise MNV4Error(f"layout must be {' or '.join(LAYOUTS)}, not {layout!r}")
    return layout


def run_in_artifact_batches(batch: np.ndarray, layout: str, dtype, artifact_batch: int | None,
                            infer: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Feed an NCHW float32 batch to `infer` in the artifact's layout, dtype and batch size and
    return float32 logits. A fixed-batch artifact gets slices of its batch size, the last slice
    padded with zeros (whose logits are dropped); a dynamic one gets the whole batch."""
    if layout == "NHWC":
        batch = batch.transpose(0, 2, 3, 1)
    batch = np.ascontiguousarray(batch, dtype=dtype)
    if artifact_batch is None:
        return np.asarray(infer(batch), dtype=np.float32)
    logits = []
    for start in range(0, len(batch), artifact_batch):
        chunk = batch[start:start + artifact_batch]
        real = len(chunk)
        if real < artifact_batch:
            chunk = np.concatenate([chunk, np.zeros((artifact_batch - real, *chunk.shape[1:]), chunk.dtype)])
        logits.append(infer(chunk)[:real])
    return np.concatenate(logits).astype(np.float32)


def vulkan_drivers() -> list[str]:
    """The Vulkan drivers (ICD manifests) the loader finds: those named by VK_DRIVER_FILES or VK_ICD_FILENAMES,
    else the system's."""
    named = os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES")
    if named:
        return [Path(file).stem for file in named.split(os.pathsep) if Path(file).is_file()]
    folders = [Path(folder) / "vulkan" / "icd.d" for folder in ("/etc", "/usr/share", "/usr/local/share")]
    return sorted(file.stem for folder in folders if folder.is_dir() for file in folder.glob("*.json"))
