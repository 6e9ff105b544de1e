"""The single torch.export of a model that the format exporters share."""
from __future__ import annotations

import torch

from ..artifact.options import MAX_BATCH


class ImageInput(torch.nn.Module):
    """The model behind an image input: RGB pixels (0 to 255) in NHWC, as camera frames and bitmaps lay them out,
    normalised inside ((pixel / 255 - mean) / std, as one multiply and add per channel) and made NCHW for the model,
    so that an app feeds its frames as they are."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("scale", (1 / (255 * std)).float())
        self.register_buffer("shift", (-torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1) / std).float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.permute(0, 3, 1, 2) * self.scale + self.shift)


def export_program(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False):
    """torch.export the eval-mode model on an NCHW example; batch axis dynamic when asked."""
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises a dimension whose example size is 1, so the example batch for a dynamic
        # export must be at least 2; the range covers every batch a user would serve.
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        dynamic_shapes = ({0: batch},)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic_shapes, strict=False)


def mobile_program(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False):
    """`export_program` with multi-query attention's broadcast matmul written as one bmm, the form the
    mobile toolchains (ExecuTorch's XNNPACK, TFLite) run without copying the shared head."""
    return export_program(model, example, dynamic_batch).run_decompositions(
        {torch.ops.aten.matmul.default: _matmul_folding_shared_head})


def _matmul_folding_shared_head(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """matmul, with multi-query attention's (B, heads, L, d) @ (B, 1, d, P) as one bmm.

    torch's decomposition copies the single key/value head once per query head with `expand`, which
    XNNPACK cannot run (so the attention would leave the ExecuTorch delegate) and which TFLite
    writes as a BROADCAST_TO fixed to the example's batch. Folding the heads into the rows,
    (B, heads * L, d) @ (B, d, P), computes the same dot products with no copy. Reshapes keep the
    batch as -1 so that a dynamic batch stays a single inferred size."""
    if a.dim() == 4 and b.dim() == 4 and b.shape[1] == 1 and a.shape[1] != 1 and a.shape[0] == b.shape[0]:
        heads, rows, inner = a.shape[1:]
        product = torch.bmm(a.reshape(-1, heads * rows, inner), b.reshape(-1, inner, b.shape[-1]))
        return product.reshape(-1, heads, rows, b.shape[-1])
    return torch.ops.aten.matmul.default.decompose(a, b)
