from functools import cache

import numpy as np
import pytest
import torch

from mnv4.artifact.parity import verification_inputs
from mnv4.data import photos
from mnv4.export import reference_model
from mnv4.model.weights import calibrate_batch_norm


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


def randomise_weights(model: torch.nn.Module, calibration: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """Give a model non-trivial weights: random BatchNorm affine parameters, running statistics measured
    on real photos and then perturbed at random, and random layer-scale values, so that activations and
    logits have a realistic scale and every parameter affects the output."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(t, low, high):
        return torch.rand(t.shape, generator=generator) * (high - low) + low

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(uniform(norm.weight, 0.75, 1.25))
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.2)
        for name, parameter in model.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(uniform(parameter, 0.1, 0.6))
        calibrate_batch_norm(model, norms, calibration)
        for norm in norms:
            norm.running_var.mul_(uniform(norm.running_var, 0.75, 1.25))
            norm.running_mean.add_(torch.randn(norm.running_mean.shape, generator=generator)
                                   * 0.1 * norm.running_var.sqrt())
    return model


@pytest.fixture(scope="session")
def photo_images():
    return photos()


class Reference:
    """A variant with the export pipeline's reproducible offline weights, the parity inputs `mnv4 export`
    verifies with (the nine photos and two random-pixel images, NCHW float32) and its PyTorch logits."""

    def __init__(self, variant: str):
        self.variant = variant
        self.model, preprocessing, _ = reference_model(variant, None, None)
        self.resolution = preprocessing.resolution
        self.inputs = verification_inputs(preprocessing)
        with torch.no_grad():
            self.logits = self.model(torch.from_numpy(self.inputs)).numpy()

    def example(self, batch: int) -> torch.Tensor:
        return torch.from_numpy(self.inputs[:batch])


reference_for = cache(Reference)


@pytest.fixture(params=["conv_small", pytest.param("hybrid_medium", marks=pytest.mark.matrix)])
def reference(request):
    """conv_small by default; hybrid_medium (attention) under the matrix marker. Attention keeps one default
    test per format: ONNX and TFLite dynamic batch, ExecuTorch attention, the Core ML interpreter's fp32."""
    return reference_for(request.param)


@pytest.fixture
def conv_small():
    return reference_for("conv_small")
