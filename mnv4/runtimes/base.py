"""The one interface every runtime implements: an artifact path and a thread count in,
a callable from an NCHW float32 batch to float32 logits out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class Runner(ABC):
    """Runs one exported artifact in its own runtime.

    Subclasses set ``runtime`` (a short name such as ``"onnxruntime"``) and implement ``run``.
    Callers always pass NCHW float32; a runner whose artifact takes NHWC transposes internally,
    so the harness never needs to know the artifact's layout.
    """

    runtime: str = ""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.threads = threads

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Map an NCHW float32 batch to a (batch, classes) float32 array of logits."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(batch, dtype=np.float32))
