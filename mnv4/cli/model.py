"""The commands on the PyTorch model itself: `info`, `predict`, `fixture`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Resolution, Top, Variant, require_torch


def info(variant: Variant, resolution: Resolution = None):
    """Print parameters, MACs, default resolution, preprocessing and a per-layer table."""
    require_torch("`mnv4 info`")
    from ..artifact.options import OPTIONS
    from ..model.factory import create_model
    from ..model.profile import summary

    OPTIONS["resolution"].check_value(resolution)
    model = create_model(variant)
    pre = model.preprocessing
    resolution = resolution or pre.resolution
    typer.echo(f"variant: {model.variant}")
    typer.echo(f"default resolution: {pre.resolution}")
    typer.echo(f"preprocessing: resize short side to {pre.resolution} / crop_pct {pre.crop_pct} "
               f"({pre.interpolation}), center crop, mean {pre.mean}, std {pre.std}")
    summary(model, (3, resolution, resolution))


def predict(
    image: Annotated[Path, typer.Argument(help="An image file (JPEG, PNG, ...).")],
    variant: Variant,
    weights: Annotated[Path | None, typer.Option(
        "--weights", "-w", help="Checkpoint (.safetensors/.pth/.bin). Default: timm's, from the local HF cache.")] = None,
    top: Top = 5,
):
    """Print the top-K ImageNet classes for IMAGE, with timm's eval preprocessing."""
    require_torch("`mnv4 predict`")
    import torch

    from ..artifact.summary import top_classes
    from ..data import imagenet_class_names, load_image
    from ..model.factory import create_model

    model = create_model(variant, pretrained=weights if weights is not None else True)
    batch = torch.from_numpy(model.preprocessing(load_image(image))[None])
    with torch.no_grad():
        logits = model(batch)[0].numpy()
    for line in top_classes(logits, top, imagenet_class_names() if len(logits) == 1000 else None):
        typer.echo(line)


def fixture(variant: Variant = "conv_small"):
    """Train VARIANT on the digits (scikit-learn's, offline), or find it in the cache: the trained checkpoint
    on which reduced precision is judged by accuracy. Prints its path; pass it to export with --weights."""
    require_torch("`mnv4 fixture`")
    from rich.console import Console

    from ..chatter import terminal
    from ..model.task import Recipe, held_out_accuracy, trained_fixture

    recipe = Recipe(variant)
    with Console(file=terminal()).status("starting") as status:
        path = trained_fixture(variant, recipe, progress=status.update)
    typer.echo(f"{path}  (held-out top-1 {held_out_accuracy(path):.1%}; export it with --weights and "
               f"--resolution {recipe.resolution})")
