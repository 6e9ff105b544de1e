"""Calibration images for int8 quantization: what sets each activation's int8 range.

They go through exactly the model's eval transform, like any input. By default they are photos that ship
inside installed packages (scikit-image's greyscale photos, scikit-learn's two colour photos) and are never the
verification photos, so a parity check is not measured on the images the ranges were fitted to; `--calibration
DIR` takes the user's own images, which is what a deployed model should be calibrated on. Images that look
like random noise are refused as a calibration set: ranges fitted to noise cost real inputs accuracy (a
published MobileNetV4 Core ML W8A8 lost 18 points of top-1 that way)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data import Preprocessing, load_image
from .errors import MNV4Error

DEFAULT_COUNT = 64
MAX_COUNT = 2048
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Neighbouring pixels of a photo are strongly correlated (r from 0.75, the grass texture, to 0.999 in every
# photo shipped here); in uniform or Gaussian pixel noise they are not (|r| < 0.01). An image below this is counted as noise.
MIN_NEIGHBOUR_CORRELATION = 0.3


@dataclass(frozen=True)
class Calibration:
    images: np.ndarray  # NCHW float32, preprocessed like the model's inputs
    source: str  # what the manifest says they are
    names: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"source": self.source, "count": len(self.images), "images": self.names}


def builtin_photos() -> dict[str, np.ndarray]:
    """The packaged photos for calibration (HWC uint8), none of them a verification photo."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    grey = {name: getattr(data, name)() for name in
            ("camera", "coins", "moon", "brick", "grass", "gravel", "clock", "cell", "page", "text")}
    colour = {name: load_sample_image(f"{name}.jpg") for name in ("china", "flower")}
    return {**colour, **{name: np.stack([image] * 3, axis=-1) for name, image in grey.items()}}


def builtin_calibration(preprocessing: Preprocessing, count: int = DEFAULT_COUNT, seed: int = 0) -> Calibration:
    """`count` images cut from the packaged photos: each photo in turn, a seeded crop of 40 to 100 % of its
    short side at a random place, mirrored half of the time; each crop is then an image like any other."""
    sources = builtin_photos()
    names = list(sources)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        name = names[index % len(names)]
        photo = sources[name]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = photo[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        images.append(preprocessing(Image.fromarray(np.ascontiguousarray(crop))))
        labels.append(f"{name}#{index // len(names)}")
    return Calibration(np.stack(images), "built-in photos (scikit-image, scikit-learn): seeded crops", labels)


def image_files(directory: Path) -> list[Path]:
    """The image files directly in `directory`, by name; a directory without any is an error."""
    if not directory.exists():
        raise MNV4Error(f"calibration directory not found: {directory}")
    if not directory.is_dir():
        raise MNV4Error(f"--calibration {directory} is not a directory: give a directory of images")
    files = sorted(path for path in directory.iterdir()
                   if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))
    if not files:
        raise MNV4Error(f"no images in calibration directory {directory} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def chosen(files: list, count: int | None, where: str) -> list:
    """`count` of `files`, spread evenly over them (names often sort by class); all when `count` is None and
    they are at most DEFAULT_COUNT."""
    if count is not None and count > len(files):
        raise MNV4Error(f"--calibration-count {count} is more than the {len(files)} images in {where}")
    count = count or min(DEFAULT_COUNT, len(files))
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round()]


def directory_calibration(directory: Path, preprocessing: Preprocessing, count: int | None = None) -> Calibration:
    """Calibration images from a directory (an unreadable one is an error naming it); noise alone is refused."""
    files = chosen(image_files(directory), count, str(directory))
    pictures = [load_image(path) for path in files]
    if all(looks_like_noise(np.asarray(picture)) for picture in pictures):
        raise MNV4Error(f"the calibration images in {directory} look like random noise (neighbouring pixels are "
                        f"uncorrelated): int8 ranges fitted to noise lose accuracy on real inputs; calibrate on real "
                        f"images of what the model will see")
    return Calibration(preprocessing.batch(pictures), str(directory.resolve()), [path.name for path in files])


def looks_like_noise(pixels: np.ndarray) -> bool:
    """Whether an image (HWC or HW) has uncorrelated neighbouring pixels, or no variation at all."""
    grey = pixels.astype(np.float64)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    left, right = grey[:, :-1].ravel(), grey[:, 1:].ravel()
    if left.std() == 0 or right.std() == 0:
        return True
    return bool(np.corrcoef(left, right)[0, 1] < MIN_NEIGHBOUR_CORRELATION)
