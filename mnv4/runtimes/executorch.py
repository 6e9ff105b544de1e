"""ExecuTorch runner for .pte artifacts: the C++ runtime through its Python bindings, XNNPACK on CPU.

A program delegated to a backend this runtime does not register (the pip wheel has XNNPACK, QNN and OpenVINO:
not Vulkan, not Core ML) loads as a program but its methods do not: that is a PlatformUnsupportedError, so
parity reports it as not executed rather than as a damaged file or a pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifact.formats import DELEGATES
from ..errors import MissingExtraError, PlatformUnsupportedError
from .base import Runner, artifact_layout, input_size, run_in_artifact_batches

# Constant methods the exporter stores in the .pte beside `forward`, so that the runner knows whether the batch axis
# is free and whether the input is RGB pixels without a manifest.
DYNAMIC_BATCH_METHOD = "dynamic_batch"
IMAGE_INPUT_METHOD = "image_input"

# ExecuTorch has one threadpool per process, and each XNNPACK delegate keeps a pointer to the pool
# that existed when its method was loaded; resizing the pool frees that one. So the pool is resized
# only by a runner that then reloads its method, and every resize bumps this count so that any other
# runner sees that its method now points at a freed pool and reloads it before running.
_threadpool_generation = 0


class ExecuTorchRunner(Runner):
    """A .pte in the ExecuTorch runtime; `threads` sizes ExecuTorch's process-wide threadpool, which
    XNNPACK runs on, whenever this runner runs."""

    runtime = "executorch"

    def __init__(self, path: str | Path, threads: int = 1, *, layout: str | None = None):
        super().__init__(path, threads)
        try:
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError:
            raise MissingExtraError("ExecuTorch", "executorch") from None
        self._portable_lib = portable_lib
        self._runtime = Runtime.get()
        self._generation = None  # nothing loaded yet
        self._bind_threadpool()
        program_input = self._forward.metadata.input_tensor_meta(0).sizes()
        self.layout = artifact_layout(program_input, layout)
        self.input_size = input_size(program_input, self.layout)
        # A dynamic-batch program's input is sized for its largest batch (memory is planned for it).
        self.max_batch = program_input[0]
        # A .pte from elsewhere lacks the methods: fixed-batch, which is always safe, and a tensor input.
        self.artifact_batch = None if self._constant(DYNAMIC_BATCH_METHOD) else self.max_batch
        self.image_input = bool(self._constant(IMAGE_INPUT_METHOD))

    def _constant(self, method: str):
        """What a constant method of the program returns; None where it has no such method."""
        if method not in self._program.method_names:
            return None
        return self._program.load_method(method).execute([])[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._bind_threadpool()
        return run_in_artifact_batches(batch, self.layout, np.float32, self.artifact_batch, self._infer)

    def _bind_threadpool(self) -> None:
        """Size the threadpool for this runner, and (re)load the program when its XNNPACK delegate
        points at a pool that has since been freed."""
        global _threadpool_generation
        if self._portable_lib._threadpool_get_thread_count() != self.threads:
            self._portable_lib._unsafe_reset_threadpool(self.threads)
            _threadpool_generation += 1
        if self._generation != _threadpool_generation:
            self._program = self._runtime.load_program(self.path)
            try:
                self._forward = self._program.load_method("forward")
            except RuntimeError:
                self._refuse_missing_backends()
                raise
            self._generation = _threadpool_generation

    def _refuse_missing_backends(self) -> None:
        """Raise PlatformUnsupportedError when the program delegates to a backend this runtime lacks. Read
        only once a method failed to load: ExecuTorch's program deserialiser takes seconds to import."""
        from executorch.exir._serialize._program import deserialize_pte_binary

        plans = deserialize_pte_binary(self.path.read_bytes()).program.execution_plan
        registered = self._runtime.backend_registry.registered_backend_names
        missing = sorted({delegate.id for plan in plans for delegate in plan.delegates} - set(registered))
        if missing:
            labels = {row.backend: row.label for row in DELEGATES.values()}
            raise PlatformUnsupportedError(
                f"no {' or '.join(labels.get(backend, backend) for backend in missing)} runtime here: "
                f"the program delegates to {', '.join(missing)}, which this ExecuTorch runtime does not register "
                f"(it has {', '.join(sorted(registered))})")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # A dynamic batch may be any size up to max_batch: split larger ones.
        with self.running():
            return np.concatenate([
                self._forward.execute([torch.from_numpy(batch[start:start + self.max_batch])])[0].numpy()
                for start in range(0, len(batch), self.max_batch)
            ])


def program_interface(path: str | Path) -> dict:
    """What the ExecuTorch runtime reads of a .pte without loading its methods (so also where its delegate
    is missing): the method names, and forward's input and output shapes."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    methods = sorted(program.method_names)
    if "forward" not in methods:
        return {"methods": methods, "inputs": [], "outputs": []}
    meta = program.metadata("forward")
    return {"methods": methods,
            "inputs": [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())],
            "outputs": [list(meta.output_tensor_meta(i).sizes()) for i in range(meta.num_outputs())]}
