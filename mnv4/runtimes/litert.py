"""LiteRT (TFLite) interpreter runner for .tflite artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingExtraError
from .base import Runner, artifact_layout, run_in_artifact_batches


class LiteRTRunner(Runner):
    """A .tflite artifact in the LiteRT interpreter, on CPU with its default XNNPACK delegate."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1, *, layout: str | None = None):
        super().__init__(path, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingExtraError("LiteRT", "tflite") from None
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        (model_input,) = self.interpreter.get_input_details()
        self._input_index = model_input["index"]
        self._output_index = self.interpreter.get_output_details()[0]["index"]
        self._input_dtype = model_input["dtype"]
        self.layout = artifact_layout(model_input["shape_signature"], layout)
        # shape_signature marks a dynamic axis with -1.
        batch = int(model_input["shape_signature"][0])
        self.artifact_batch = None if batch == -1 else batch
        self.interpreter.allocate_tensors()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, self.layout, self._input_dtype, self.artifact_batch, self._infer)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if tuple(self.interpreter.get_input_details()[0]["shape"]) != batch.shape:
            # Only a dynamic-batch artifact gets here: fixed ones are always fed their own shape.
            self.interpreter.resize_tensor_input(self._input_index, batch.shape)
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index)
