"""Core ML export: the shared torch.export program converted by coremltools to an ML program, saved
as one .mlpackage directory. Converting and saving work anywhere; running one needs macOS."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..artifact.formats import FORMATS
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..errors import MissingExtraError, UnsupportedOptionError
from .program import MAX_DYNAMIC_BATCH, export_program

INPUT_NAME = "pixels"
IMAGE_INPUT_NAME = "image"
OUTPUT_NAME = "logits"
MINIMUM_DEPLOYMENT_TARGET = "iOS17"


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp32",
           dynamic_batch: bool = False, nhwc: bool = False, image_input: bool = False,
           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> dict:
    """Write `model` as a Core ML ML program (iOS 17+) at `path`; returns the facts for the manifest.

    fp16 is Core ML's float16 compute precision (weights and arithmetic, as the GPU and Neural Engine
    run anyway) with float32 input and output. A dynamic batch is a RangeDim from 1 to the shared
    export's maximum. The input is an NCHW float32 tensor, or with `image_input` an RGB image (a
    CVPixelBuffer on device) normalised inside the model with `mean` and `std`.
    """
    FORMATS["coreml"].check(precision=precision, nhwc=nhwc, dynamic_batch=dynamic_batch, image_input=image_input)
    if image_input and (dynamic_batch or example.shape[0] != 1):
        raise UnsupportedOptionError("a Core ML image input is one image per prediction: export a batch of 1, "
                                     "or a tensor input for other batches")
    try:
        import coremltools as ct
    except ImportError:
        raise MissingExtraError("Core ML export", "coreml") from None

    batch = ct.RangeDim(1, MAX_DYNAMIC_BATCH, default=1) if dynamic_batch else example.shape[0]
    shape = (batch, *example.shape[1:])
    facts = {}
    if image_input:
        normalisation = _image_normalisation(mean, std)
        model = _ChannelGain(model, normalisation["channel_gain"])
        model_input = ct.ImageType(name=IMAGE_INPUT_NAME, shape=shape, scale=normalisation["scale"],
                                   bias=normalisation["bias"], color_layout=ct.colorlayout.RGB)
        facts["image_normalisation"] = normalisation
    else:
        model_input = ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)
    # Core ML converts the inference-dialect program that decompositions give.
    program = export_program(model, example, dynamic_batch).run_decompositions({})
    compute_precision = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    mlmodel = ct.convert(
        program,
        inputs=[model_input],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET),
        compute_precision=compute_precision,
        # Loading compiles the model for prediction, which only macOS can do; saving needs no load.
        skip_model_load=True,
    )
    mlmodel.save(str(path))

    dtype = "float16" if precision == "fp16" else "float32"
    return {
        "toolchain": {"torch": torch.__version__, "coremltools": ct.__version__},
        "input_name": IMAGE_INPUT_NAME if image_input else INPUT_NAME,
        "input_layout": "NCHW",
        "input_shape": [-1 if dynamic_batch else example.shape[0], *example.shape[1:]],
        "input_dtype": "uint8" if image_input else "float32",
        "input_kind": "image" if image_input else "tensor",
        "output_name": OUTPUT_NAME,
        "model_type": "mlprogram",
        "minimum_deployment_target": MINIMUM_DEPLOYMENT_TARGET,
        "weights_dtype": dtype,
        "compute_dtype": dtype,
        **({"max_batch": MAX_DYNAMIC_BATCH} if dynamic_batch else {}),
        **facts,
    }


def _image_normalisation(mean: Sequence[float], std: Sequence[float]) -> dict:
    """Core ML's image preprocessing is `scale * pixel + bias` with ONE scale for all channels, so a
    per-channel std cannot be folded into it exactly. Scale by the mean std, and bias by mean / that
    std, so a channel comes out as (pixel/255 - mean) / mean_std: off from the exact value only by
    the factor std / mean_std. The model then multiplies each channel by mean_std / std, which makes
    the normalisation exact; `max_scale_deviation` says how far the single scale alone would be off."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    mean_std = std.mean()
    return {
        "scale": float(1 / (255 * mean_std)),
        "bias": [float(b) for b in -mean / mean_std],
        "channel_gain": [float(g) for g in mean_std / std],
        "max_scale_deviation": float(np.abs(std / mean_std - 1).max()),
    }


class _ChannelGain(torch.nn.Module):
    """Multiplies each input channel by a constant before the model: the per-channel part of the
    normalisation that the image input's single scale leaves out."""

    def __init__(self, model: torch.nn.Module, gain: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.gain)
