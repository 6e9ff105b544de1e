"""Eval preprocessing (the same as timm's eval transform) and the real photos used for parity.

The photos come from scikit-image, which ships them inside its wheel, so nothing is downloaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

_PIL_INTERPOLATION = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """What a checkpoint expects: timm's `pretrained_cfg` fields that shape the eval transform."""

    resolution: int
    crop_pct: float
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def at(self, resolution: int) -> "Preprocessing":
        return Preprocessing(resolution, self.crop_pct, self.interpolation, self.mean, self.std)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One RGB image -> a CHW float32 array: resize the short side to resolution / crop_pct,
        centre-crop, scale to [0, 1], normalise (torchvision's Resize + CenterCrop arithmetic)."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGB")
        width, height = image.size
        short_side = math.floor(self.resolution / self.crop_pct)
        if width <= height:
            new_size = (short_side, int(short_side * height / width))
        else:
            new_size = (int(short_side * width / height), short_side)
        image = image.resize(new_size, _PIL_INTERPOLATION[self.interpolation])
        left = int(round((new_size[0] - self.resolution) / 2.0))
        top = int(round((new_size[1] - self.resolution) / 2.0))
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def batch(self, images) -> np.ndarray:
        return np.stack([self(image) for image in images])


def photos() -> dict[str, np.ndarray]:
    """Nine real RGB photos (HWC uint8) that scikit-image ships."""
    from skimage import data

    motorcycle_left, motorcycle_right, _ = data.stereo_motorcycle()
    return {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "hubble_deep_field": data.hubble_deep_field(),
        "retina": data.retina(),
        "immunohistochemistry": data.immunohistochemistry(),
        "motorcycle_left": motorcycle_left,
        "motorcycle_right": motorcycle_right,
    }


def photo_batch(preprocessing: Preprocessing) -> np.ndarray:
    """All photos, preprocessed: an (N, 3, R, R) float32 array."""
    return preprocessing.batch(photos().values())


def load_image(path: str | Path) -> Image.Image:
    from .errors import MNV4Error

    try:
        return Image.open(path).convert("RGB")
    except FileNotFoundError:
        raise MNV4Error(f"image not found: {path}") from None
    except (OSError, ValueError) as error:
        raise MNV4Error(f"cannot read image {path}: {error}") from None
