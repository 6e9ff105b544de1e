"""PyTorch itself as a runner: the reference, eager NCHW, channels-last or torch.compile, and the model in
float64, the truth that parity is judged against (the one runner whose logits are float64)."""
from __future__ import annotations

import copy

import numpy as np
import torch

from .base import Runner

MODES = ("eager", "channels_last", "compile", "float64")


class TorchRunner(Runner):
    runtime = "torch"

    def __init__(self, model: torch.nn.Module, threads: int = 1, mode: str = "eager"):
        if mode not in MODES:
            raise ValueError(f"unknown torch mode {mode!r}; choose one of {MODES}")
        super().__init__(path="", threads=threads)
        self.mode = mode
        self.model = model.eval()
        # Copies: Module.to() converts in place, and the caller's model may be the reference.
        if mode == "channels_last":
            self.model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        elif mode == "float64":
            self.model = copy.deepcopy(self.model).double()
        self.forward = torch.compile(self.model) if mode == "compile" else self.model

    def run(self, batch: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            x = torch.from_numpy(batch)
            if self.mode == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            if self.mode == "float64":
                with torch.inference_mode():  # float32 inputs are exact in float64
                    return self.forward(x.double()).numpy()
            with torch.inference_mode():
                return self.forward(x).float().numpy()
        finally:
            torch.set_num_threads(previous)
