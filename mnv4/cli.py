"""The `mnv4` command line: a thin layer over the package's functions."""
from __future__ import annotations

from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from .errors import MNV4Error

app = typer.Typer(
    help="MobileNetV4: reference model, verified exports, parity and latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

VARIANT_HELP = "Model variant (see `mnv4 info --help`): conv_small, conv_medium, conv_large, hybrid_medium, ..."


@contextmanager
def reported_errors():
    """Bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except MNV4Error as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def imagenet_class_names() -> list[str]:
    return resources.files("mnv4").joinpath("assets/imagenet_classes.txt").read_text().splitlines()


@app.command()
def info(
    variant: str = typer.Option(..., "--variant", "-v", help=VARIANT_HELP),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", min=32,
                                             help="Input resolution (default: the variant's)."),
):
    """Print parameters, MACs, default resolution, preprocessing and a per-layer table."""
    from .model.factory import create_model
    from .model.profile import summary

    with reported_errors():
        model = create_model(variant)
        pre = model.preprocessing
        resolution = resolution or pre.resolution
        typer.echo(f"variant: {model.variant}")
        typer.echo(f"default resolution: {pre.resolution}")
        typer.echo(f"preprocessing: resize short side to {pre.resolution} / crop_pct {pre.crop_pct} "
                   f"({pre.interpolation}), center crop, mean {pre.mean}, std {pre.std}")
        summary(model, (3, resolution, resolution))


@app.command()
def predict(
    image: Path = typer.Argument(..., help="An image file (JPEG, PNG, ...)."),
    variant: str = typer.Option(..., "--variant", "-v", help=VARIANT_HELP),
    weights: Optional[Path] = typer.Option(
        None, "--weights", "-w", help="Checkpoint (.safetensors/.pth/.bin). Default: timm's, from the local HF cache."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes to print."),
):
    """Print the top-K ImageNet classes for IMAGE, with timm's eval preprocessing."""
    import torch

    from .data import load_image
    from .model.factory import create_model

    with reported_errors():
        model = create_model(variant, pretrained=weights if weights is not None else True)
        batch = torch.from_numpy(model.preprocessing(load_image(image))[None])
        with torch.no_grad():
            probabilities = model(batch).softmax(dim=-1)[0]
        names = imagenet_class_names() if probabilities.numel() == 1000 else None
        values, indices = probabilities.topk(min(top, probabilities.numel()))
        for rank, (value, index) in enumerate(zip(values.tolist(), indices.tolist()), start=1):
            label = names[index] if names else f"class {index}"
            typer.echo(f"{rank}. {label} (index {index}): {value * 100:.2f}%")


if __name__ == "__main__":
    app()
