"""Core ML runner for .mlpackage artifacts: coremltools' MLModel.predict, which only macOS can run."""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np

from ..errors import MissingExtraError, MNV4Error, PlatformUnsupportedError
from .base import Runner, run_in_artifact_batches


class CoreMLRunner(Runner):
    """An .mlpackage with a tensor input in Core ML, on the CPU so that float32 stays float32 (the
    GPU and Neural Engine compute in float16) and numbers compare with the other CPU runtimes.
    Core ML schedules its own threads: `threads` is recorded, not applied."""

    runtime = "coreml"

    def __init__(self, path: str | Path, threads: int = 1):
        super().__init__(path, threads)
        # Checked first: installing coremltools would not help on another OS.
        if sys.platform != "darwin":
            raise PlatformUnsupportedError(
                f"Core ML predictions need macOS; on {platform.system()} a .mlpackage can be exported and "
                f"inspected (coremltools.utils.load_spec) but not run")
        try:
            import coremltools as ct
        except ImportError:
            raise MissingExtraError("Core ML", "coreml") from None
        self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit.CPU_ONLY)
        description = self.model.get_spec().description
        model_input = description.input[0]
        if model_input.type.WhichOneof("Type") != "multiArrayType":
            raise MNV4Error(f"{self.path.name} takes an image, not the normalised NCHW tensors a runner is given; "
                            f"export it with a tensor input to run it here")
        self._input_name = model_input.name
        self._output_name = description.output[0].name
        array = model_input.type.multiArrayType
        # A RangeDim batch shows as a size range; a fixed batch only as the shape.
        batch_range = array.shapeRange.sizeRanges[0] if array.shapeRange.sizeRanges else None
        dynamic = batch_range is not None and batch_range.upperBound != batch_range.lowerBound
        self.artifact_batch = None if dynamic else int(array.shape[0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, "NCHW", np.float32, self.artifact_batch, self._infer)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.model.predict({self._input_name: batch})[self._output_name]
