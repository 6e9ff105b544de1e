"""LiteRT (TFLite) interpreter runner for .tflite artifacts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingExtraError, MNV4Error
from .base import Runner, artifact_layout, run_in_artifact_batches


class LiteRTRunner(Runner):
    """A .tflite artifact in the LiteRT interpreter, on CPU with its default XNNPACK delegate.

    An artifact with integer input and output (int8 for NPUs) still takes NCHW float32 and gives float32
    logits: the input is quantized with the input tensor's own scale and zero point (rounded, clipped to
    the integer range) and the output dequantized with the output tensor's, read from the file."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1, *, layout: str | None = None):
        super().__init__(path, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingExtraError("LiteRT", "tflite") from None
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        (model_input,) = self.interpreter.get_input_details()
        model_output = self.interpreter.get_output_details()[0]
        self._input_index = model_input["index"]
        self._output_index = model_output["index"]
        self._input_dtype = model_input["dtype"]
        self._quantize = quantization_of(model_input)
        self._dequantize = quantization_of(model_output)
        self.layout = artifact_layout(model_input["shape_signature"], layout)
        # shape_signature marks a dynamic axis with -1.
        batch = int(model_input["shape_signature"][0])
        self.artifact_batch = None if batch == -1 else batch
        self.interpreter.allocate_tensors()

    def run(self, batch: np.ndarray) -> np.ndarray:
        # An integer input is quantized in _infer, from float32 (the padding of a last batch included).
        dtype = np.float32 if self._quantize else self._input_dtype
        return run_in_artifact_batches(batch, self.layout, dtype, self.artifact_batch, self._infer)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if tuple(self.interpreter.get_input_details()[0]["shape"]) != batch.shape:
            # Only a dynamic-batch artifact gets here: fixed ones are always fed their own shape.
            self.interpreter.resize_tensor_input(self._input_index, batch.shape)
            self.interpreter.allocate_tensors()
        if self._quantize:
            scale, zero_point = self._quantize
            limits = np.iinfo(self._input_dtype)
            batch = np.clip(np.round(batch / scale) + zero_point, limits.min, limits.max).astype(self._input_dtype)
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self._output_index)
        if self._dequantize:
            scale, zero_point = self._dequantize
            logits = (logits.astype(np.float32) - zero_point) * np.float32(scale)
        return logits


def quantization_of(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized integer input or output tensor; None for a float one (or an
    integer one without quantization, fed as it is)."""
    scales, zero_points = detail["quantization_parameters"]["scales"], detail["quantization_parameters"]["zero_points"]
    if not np.issubdtype(detail["dtype"], np.integer) or not len(scales):
        return None
    if len(scales) != 1:
        raise MNV4Error(f"{detail['name']}: an integer input or output must be quantized per tensor, not with "
                        f"{len(scales)} scales")
    return float(scales[0]), int(zero_points[0])
