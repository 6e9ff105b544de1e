"""onnxruntime runner for .onnx and .ort artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact.facts import IMAGE_INPUT_NAME
from ..artifact.formats import FORMATS
from ..errors import MissingExtraError
from .base import Runner, artifact_layout, input_size, run_in_artifact_batches

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeRunner(Runner):
    """An .onnx artifact in onnxruntime: CUDA when this onnxruntime build offers it, else CPU. An .ort artifact on the
    CPU alone: its graph was optimized for the CPU execution provider, as ONNX Runtime Mobile runs it."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, *, layout: str | None = None):
        super().__init__(path, threads)
        try:
            import onnxruntime
        except ImportError:
            raise MissingExtraError("onnxruntime", "onnx") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # a classifier is one chain of ops: nothing to run in parallel
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and self.path.suffix != FORMATS["ort"].suffix:
            providers.insert(0, "CUDAExecutionProvider")
        # From its bytes: a model that reads weights from files beside it (external data) cannot load, so what runs
        # is the one file whose sha256 the manifest records (mnv4 writes self-contained ONNX files). onnxruntime tells
        # an ORT file from an ONNX one by its bytes.
        self.session = onnxruntime.InferenceSession(self.path.read_bytes(), options, providers=providers)
        (model_input,) = self.session.get_inputs()
        self._input_name = model_input.name
        self.image_input = model_input.name == IMAGE_INPUT_NAME
        self._input_dtype = _ONNX_DTYPES[model_input.type]
        self.layout = artifact_layout(model_input.shape, layout)
        self.input_size = input_size(model_input.shape, self.layout)
        # A dynamic axis reads as a name (or None), a fixed one as its size.
        self.artifact_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, self.layout, self._input_dtype, self.artifact_batch, self._infer)

    def execution(self) -> dict:
        return {"execution_providers": self.session.get_providers()}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self.running():
            return self.session.run(None, {self._input_name: batch})[0]
