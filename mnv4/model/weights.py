"""Loading checkpoints: timm's trained MobileNetV4 weights (our state-dict layout is timm's), from a
local file or from the local Hugging Face cache. Nothing here downloads."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .blocks import MultiQueryAttention

logger = logging.getLogger("mnv4")

CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
HEAD_PREFIXES = ("conv_head.", "norm_head.", "classifier.")
# Containers that training frameworks wrap a state dict in, and prefixes that wrappers add to keys.
_NESTING_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pth/.pt/.bin file read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reader has its own exception types for a corrupt file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason}") from None
    for key in _NESTING_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a checkpoint: it holds no mapping of names to tensors")
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _describe(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:5])
    return shown + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def checkpoint_classes(state: dict[str, torch.Tensor] | None) -> int | None:
    """The number of classes a checkpoint's classifier has; None for a checkpoint without one."""
    weight = (state or {}).get("classifier.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _only_classes_differ(weight: torch.Tensor, expected: torch.Tensor | None) -> bool:
    """A classifier for another number of classes on the same features: the one difference that a new
    classifier makes good. Any other shape (other features: another variant's head) is a mis-shaped key."""
    return (expected is not None and weight.shape != expected.shape and weight.ndim == expected.ndim == 2
            and weight.shape[1] == expected.shape[1])


def load_checkpoint(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a checkpoint (`state`, when the caller has read it already) into `model`, exactly: every key must
    match in name and shape, except that a classifier of another size, or any head on a features-only
    model, is left out and reported."""
    state = read_state_dict(path) if state is None else state
    expected = model.state_dict()
    if getattr(model, "features_only", False):
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    elif all(k in state for k in CLASSIFIER_KEYS) and _only_classes_differ(state["classifier.weight"],
                                                                          expected.get("classifier.weight")):
        logger.warning(
            "checkpoint %s has a %d-class classifier; keeping its backbone and initialising a new "
            "%d-class classifier", Path(path).name, state["classifier.weight"].shape[0], model.num_classes,
        )
        state = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
        expected = {k: v for k, v in expected.items() if k not in CLASSIFIER_KEYS}
    # BatchNorm's step counter carries no weights; old checkpoints lack it.
    missing = {k for k in expected if k not in state and not k.endswith("num_batches_tracked")}
    unexpected = set(state) - set(expected)
    misshaped = {f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                 for k in set(state) & set(expected) if state[k].shape != expected[k].shape}
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_describe(misshaped)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {model.variant}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def hf_repo_id(variant: str, tag: str) -> str:
    return f"timm/mobilenetv4_{variant}.{tag}"


def find_in_hf_cache(variant: str, tags: tuple[str, ...]) -> tuple[str, Path] | None:
    """(tag, path) of the first of the variant's timm checkpoints present in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    for tag in tags:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hf_repo_id(variant, tag), filename)
            if isinstance(found, str):
                return tag, Path(found)
    return None


MAX_ATTENTION_LOGIT = 4.0


def calibrate_batch_norm(model: nn.Module, norms: list[nn.BatchNorm2d], images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to their average over `images`."""
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batch
    model.train()
    model(images)
    model.eval()
    for norm in norms:
        norm.momentum = 0.1


def seeded_calibrated_weights(model: nn.Module, calibration: torch.Tensor, seed: int = 0) -> dict:
    """Reproducible offline weights that make parity checks meaningful.

    Convs get a seeded He init; the classifier a normal init scaled so that logits spread like a trained
    model's (std of a few units, not the 0.01 of a training init); layer-scale values are drawn from
    U(0.1, 0.5) instead of 1e-5 (at 1e-5 a hybrid's residual branches vanish and its logits are nearly
    constant); BatchNorm statistics are then measured on `calibration` images, so activations have a
    realistic scale, and attention scores are kept near +-MAX_ATTENTION_LOGIT.
    Returns facts for the manifest, including the logit scale this gives."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d,)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=3.0 / module.in_features ** 0.5, generator=generator)
                nn.init.zeros_(module.bias)
        for name, parameter in model.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.4 + 0.1)
        calibrate_batch_norm(model, norms, calibration)
        # Random query/key projections give attention scores in the hundreds: a hard argmax that flips on
        # float rounding, so no two runtimes could agree. Scale each layer's queries so that its largest
        # score on the calibration images is about MAX_ATTENTION_LOGIT, then re-measure the statistics.
        attention_layers = [m for m in model.modules() if isinstance(m, MultiQueryAttention)]
        if attention_layers:
            largest = {}
            handles = [layer.register_forward_hook(
                lambda layer, args, _out: largest.__setitem__(layer, layer.attention_logits(args[0]).abs().max()))
                for layer in attention_layers]
            model(calibration)
            for handle in handles:
                handle.remove()
            for layer, value in largest.items():
                layer.query.proj.weight.mul_(MAX_ATTENTION_LOGIT / value)
            calibrate_batch_norm(model, norms, calibration)
        logits = model(calibration)
    return {"kind": "seeded-calibrated", "seed": seed, "logit_std": round(float(logits.std()), 4),
            "logit_max_abs": round(float(logits.abs().max()), 4)}
