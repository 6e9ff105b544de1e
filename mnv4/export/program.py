"""The single torch.export of a model that the format exporters share."""
from __future__ import annotations

import torch

# torch.export specialises a dimension whose example size is 1, so the example batch for a
# dynamic export must be at least 2; the range covers every batch a user would serve.
MAX_DYNAMIC_BATCH = 1024


def export_program(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False):
    """torch.export the eval-mode model on an NCHW example; batch axis dynamic when asked."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
        dynamic_shapes = ({0: batch},)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic_shapes, strict=False)
