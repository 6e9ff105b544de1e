"""OpenVINO runner for .xml (IR) artifacts: the CPU plugin, with the .bin of weights read from beside the .xml."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..artifact.facts import IMAGE_INPUT_NAME
from ..errors import MissingExtraError
from .base import Runner, artifact_layout, input_size, run_in_artifact_batches

# The plugin's nodes that do the arithmetic: what precision they ran in is the record's (u8/i8: int8 kernels).
_COMPUTE_NODES = ("Convolution", "FullyConnected", "MatMul")


class OpenVinoRunner(Runner):
    """An IR in OpenVINO's CPU plugin: `threads` inference threads, the latency hint (one stream, as an app predicting
    one image at a time), and float32 arithmetic asked for (`precision` "f32"): on a CPU with bf16 (AVX512_BF16,
    AMX) the plugin would otherwise compute a float32 IR in bfloat16."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int = 1, *, precision: str = "f32"):
        super().__init__(path, threads)
        try:
            import openvino as ov
        except ImportError:
            raise MissingExtraError("OpenVINO", "openvino") from None
        self._core = ov.Core()
        with self.running():
            model = self._core.read_model(str(self.path))
            self._compiled = self._core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision})
        (model_input,) = self._compiled.inputs
        self.image_input = IMAGE_INPUT_NAME in model_input.get_names()
        shape = [dim.get_length() if dim.is_static else None for dim in model_input.get_partial_shape()]
        self.layout = artifact_layout(shape, None)
        self.input_size = input_size(shape, self.layout)
        self.artifact_batch = shape[0]
        self._request = self._compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, self.layout, np.float32, self.artifact_batch, self._infer)

    def execution(self) -> dict:
        """The precision asked for, the precisions the plugin's nodes ran in (its runtime model), and the CPU's."""
        infos = (node.get_rt_info() for node in self._compiled.get_runtime_model().get_ops())
        executed = Counter(info["runtimePrecision"].astype(str) for info in infos
                           if info["layerType"].astype(str) in _COMPUTE_NODES)
        return {"device": "CPU", "inference_precision": self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                "executed_precisions": dict(sorted(executed.items())),
                "cpu_capabilities": list(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self.running():
            return self._request.infer([batch])[0].copy()
