"""Parameter and multiply-accumulate counts, per layer and in total (MACs = FLOPs / 2 as counted by
torch's own FlopCounterMode: convolutions, matmuls and the classifier)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LayerProfile:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelProfile:
    layers: list[LayerProfile]
    params: int
    macs: int
    input_size: tuple[int, int, int]


def _rows(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers a summary lists: the stem, every block, and the head's parts."""
    rows = [(name, module) for name, module in model.named_children() if name in ("conv_stem", "bn1")]
    for stage_index, stage in enumerate(model.blocks):
        rows += [(f"blocks.{stage_index}.{i}", block) for i, block in enumerate(stage)]
    rows += [(name, getattr(model, name)) for name in ("conv_head", "norm_head", "classifier") if hasattr(model, name)]
    return rows


def profile(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> ModelProfile:
    rows = _rows(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, module in rows
    ]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    flops = counter.get_flop_counts()
    root = type(model).__name__
    layers = [
        LayerProfile(name, type(module).__name__, shapes[name], sum(p.numel() for p in module.parameters()),
                     sum(flops.get(f"{root}.{name}", {}).values()) // 2)
        for name, module in rows
    ]
    return ModelProfile(layers, sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2,
                        tuple(input_size))


def summary(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> str:
    """A per-layer table (output shape, parameters, MACs) with totals; printed and returned."""
    result = profile(model, input_size)
    header = f"{'layer':<14} {'type':<28} {'output shape':<20} {'params':>12} {'MACs':>15}"
    lines = [header, "-" * len(header)]
    for layer in result.layers:
        lines.append(f"{layer.name:<14} {layer.kind:<28} {str(list(layer.output_shape)):<20} "
                     f"{layer.params:>12,} {layer.macs:>15,}")
    lines += ["-" * len(header),
              f"input {list(input_size)}: {result.params:,} parameters, {result.macs / 1e9:.3f} GMACs"]
    text = "\n".join(lines)
    print(text)
    return text
