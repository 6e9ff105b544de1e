"""Eval preprocessing (the same as timm's eval transform) and the real photos used for parity.

The photos come from scikit-image, which ships them inside its wheel, so nothing is downloaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

_PIL_INTERPOLATION = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
INTERPOLATIONS = tuple(_PIL_INTERPOLATION)


@dataclass(frozen=True)
class Preprocessing:
    """What a checkpoint expects: timm's `pretrained_cfg` fields that shape the eval transform."""

    resolution: int
    crop_pct: float
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def at(self, resolution: int) -> Preprocessing:
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


def pixels_of(normalised: np.ndarray, mean, std) -> np.ndarray:
    """The RGB pixels (0 to 255, float32, NCHW) that a normalised NCHW batch came from: what an image input takes."""
    mean, std = (np.asarray(values, np.float64).reshape(1, -1, 1, 1) for values in (mean, std))
    return ((normalised * std + mean) * 255).astype(np.float32)


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's class names, in index order (they ship with mnv4)."""
    from importlib import resources

    return resources.files("mnv4").joinpath("assets/imagenet_classes.txt").read_text().splitlines()


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
    """An image file as 8-bit RGB, upright as its EXIF orientation says, whatever its mode: 16-bit and 32-bit
    integer or float grey levels are scaled from their own range (not clipped at 255), and transparency is
    composited over white, as a viewer shows it. An image whose scale cannot be told is refused."""
    from .errors import MNV4Error

    path = Path(path)
    if not path.exists():
        raise MNV4Error(f"image not found: {path}")
    if path.is_dir():
        raise MNV4Error(f"cannot read image {path}: it is a directory")
    try:
        image = Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # SyntaxError: some broken files
        raise MNV4Error(f"cannot read image {path}: {error}") from None
    _check_proportions(image, path)  # from the header, before the pixels are decoded
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise MNV4Error(f"cannot read image {path}: {error}") from None
    return _as_rgb(image, path)


# The eval transform scales an image's short side to the resolution: a long thin image grows without bound (a
# 1 x 300000 px PNG of 957 bytes would need 7 GB), and no classifier sees anything in a sliver. Panoramas pass.
MAX_ASPECT_RATIO = 32


def _check_proportions(image: Image.Image, path: Path) -> None:
    from .errors import MNV4Error

    width, height = image.size
    if not width or not height or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise MNV4Error(f"cannot classify image {path}: it is {width} x {height} px, more than {MAX_ASPECT_RATIO} times "
                        f"longer than wide; crop it to the part to classify")


# Pillow's modes of one channel wider than 8 bits, which convert("RGB") clips at 255 instead of scaling.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _as_rgb(image: Image.Image, path: Path) -> Image.Image:
    from .errors import MNV4Error

    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise MNV4Error(f"cannot read image {path}: it has NaN or infinite pixel values")
        full_scale = _full_scale(image, values)
        if full_scale is None:
            raise MNV4Error(f"cannot read image {path}: a {image.mode} image with values from {values.min():g} to "
                            f"{values.max():g}, neither in [0, 1], [0, 255] nor [0, 65535]; convert it to 8-bit RGB")
        grey = np.round(values * (255.0 / full_scale)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _full_scale(image: Image.Image, values: np.ndarray) -> float | None:
    """The value that means full brightness for a wide single-channel image, or None when it can't be told."""
    low, high = values.min(), values.max()
    if low < 0:
        return None
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        return 65535.0  # 16-bit samples (Pillow opens a 16-bit grey PNG as I;16 or I)
    if image.mode == "F" and high <= 1.0:
        return 1.0
    for scale in (255.0, 65535.0):
        if high <= scale:
            return scale
    return None
