"""`create_model` and the seed port's factory functions."""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from . import specs
from .network import MobileNetV4
from .weights import checkpoint_classes, find_in_hf_cache, hf_repo_id, load_checkpoint, read_state_dict


def list_variants() -> list[str]:
    return list(specs.VARIANTS)


def create_model(variant: str, pretrained: bool | str | Path = False, num_classes: int | None = None,
                 **options) -> MobileNetV4:
    """Build a variant; `pretrained` is False, True (timm's checkpoint from the local Hugging Face
    cache, never downloaded) or the path of a checkpoint (.safetensors, .pth, .bin).

    `num_classes` defaults to the checkpoint's own (a model fine-tuned on 10 classes loads as a 10-class
    model), else 1000; another number keeps the checkpoint's backbone and starts a new classifier.
    Options go to MobileNetV4: in_chans, drop_rate, fused_attention, features_only, out_indices."""
    spec = specs.get_spec(variant)
    preprocessing = spec.preprocessing
    if pretrained is True:
        if not spec.pretrained_tags:
            raise CheckpointError(f"timm publishes no trained weights for {spec.name}; pass a checkpoint path")
        found = find_in_hf_cache(spec.name, spec.pretrained_tags)
        if found is None:
            raise CheckpointError(
                f"no trained {spec.name} checkpoint in the local Hugging Face cache; on a connected machine run "
                f"`huggingface-cli download {hf_repo_id(spec.name, spec.pretrained_tags[0])}` and copy the cache "
                f"(~/.cache/huggingface, or $HF_HOME) here, or pass the .safetensors path as pretrained"
            )
        tag, pretrained = found
        preprocessing = specs.TAG_PREPROCESSING.get((spec.name, tag), spec.preprocessing)
    state = read_state_dict(pretrained) if pretrained else None
    if num_classes is None:
        num_classes = checkpoint_classes(state) or 1000
    model = MobileNetV4(spec, num_classes=num_classes, **options)
    model.preprocessing = preprocessing
    model.checkpoint = None
    if pretrained:
        load_checkpoint(model, pretrained, state)
        model.checkpoint = Path(pretrained)
    return model.eval()


def mobilenetv4_small(pretrained=False, num_classes: int | None = None, **options) -> MobileNetV4:
    return create_model("conv_small", pretrained, num_classes, **options)


def mobilenetv4_medium(pretrained=False, num_classes: int | None = None, **options) -> MobileNetV4:
    return create_model("conv_medium", pretrained, num_classes, **options)


def mobilenetv4_large(pretrained=False, num_classes: int | None = None, **options) -> MobileNetV4:
    return create_model("conv_large", pretrained, num_classes, **options)


def mobilenetv4_hybrid_medium(pretrained=False, num_classes: int | None = None, **options) -> MobileNetV4:
    return create_model("hybrid_medium", pretrained, num_classes, **options)


def mobilenetv4_hybrid_large(pretrained=False, num_classes: int | None = None, **options) -> MobileNetV4:
    return create_model("hybrid_large", pretrained, num_classes, **options)
