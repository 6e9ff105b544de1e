"""TFLite export through litert-torch, for the LiteRT interpreter."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import torch

from ..errors import MissingExtraError, UnsupportedOptionError

PRECISIONS = ("fp32", "fp16")
TOOLCHAIN = ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp32",
           dynamic_batch: bool = False, nhwc: bool = False) -> dict:
    """Write `model` as a .tflite file at `path`; returns the facts for the manifest.

    The batch is fixed at the example's (the LiteRT runner splits larger batches). fp16 stores
    the convolution and linear weights in half precision and computes in float32 (litert-torch's
    fp16 recipe: ai-edge-quantizer's float casting), so inputs and outputs stay float32. With
    `nhwc` the input is NHWC, as TFLite kernels and camera frames lay it out; the output is logits.
    """
    if dynamic_batch:
        # litert-torch 0.10 types each convolution's output with the example's batch, so the written file
        # only runs at that batch; its JAX-bridged lowerings reject a symbolic one (docs/export.md).
        raise UnsupportedOptionError("--dynamic-batch is not available for TFLite: litert-torch 0.10 fixes every "
                                     "op after the input to the example's batch; export a fixed --batch")
    if precision not in PRECISIONS:
        raise UnsupportedOptionError(f"TFLite export supports precision {' or '.join(PRECISIONS)}, not {precision!r}")
    try:
        import litert_torch
        from ai_edge_litert.interpreter import Interpreter
        from litert_torch.generative.quantize import quant_recipes
    except ImportError:
        raise MissingExtraError("TFLite export", "tflite") from None

    module, sample = model.eval(), example
    if nhwc:
        module = litert_torch.to_channel_last_io(model, args=[0]).eval()
        sample = example.permute(0, 2, 3, 1).contiguous()
    quant_config = quant_recipes.full_fp16_recipe() if precision == "fp16" else None
    litert_torch.convert(module, (sample,), quant_config=quant_config).export(str(path))

    # Describe the input as the written file declares it.
    (model_input,) = Interpreter(model_path=str(path)).get_input_details()
    return {
        "toolchain": {package: metadata.version(package) for package in TOOLCHAIN},
        "input_name": model_input["name"],
        "input_layout": "NHWC" if nhwc else "NCHW",
        "input_shape": [int(size) for size in model_input["shape_signature"]],
        "input_dtype": model_input["dtype"].__name__,
        "output_dtype": "float32",
        "weights_dtype": "float16" if precision == "fp16" else "float32",
        "compute_dtype": "float32",
    }
