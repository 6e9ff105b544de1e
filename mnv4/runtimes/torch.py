"""PyTorch itself as a runner: the reference, eager NCHW, channels-last or torch.compile."""
from __future__ import annotations

import copy

import numpy as np
import torch

from .base import Runner

MODES = ("eager", "channels_last", "compile")


class TorchRunner(Runner):
    runtime = "torch"

    def __init__(self, model: torch.nn.Module, threads: int = 1, mode: str = "eager"):
        if mode not in MODES:
            raise ValueError(f"unknown torch mode {mode!r}; choose one of {MODES}")
        super().__init__(path="", threads=threads)
        self.mode = mode
        self.model = model.eval()
        if mode == "channels_last":
            # A copy: Module.to() converts in place, and the caller's model may be the reference.
            self.model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if mode == "compile" else self.model

    def run(self, batch: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            x = torch.from_numpy(batch)
            if self.mode == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return self.forward(x).float().numpy()
        finally:
            torch.set_num_threads(previous)
