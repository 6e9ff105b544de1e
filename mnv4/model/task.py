"""A small real classification task that mnv4 trains itself: scikit-learn's handwritten digits (1,797 8x8
scans that ship inside the package; nothing is downloaded), upscaled to RGB images. Untrained logits can say
whether an artifact computes what the model computes, not whether a reduced-precision artifact still
classifies: a trained fixture can, by its held-out top-1 accuracy and its change from float32.

Training is deterministic on the CPU (seeded order and initialisation, no augmentation) and cached by the
hash of its recipe, so a test run pays for it once at most. The checkpoint carries the task in its metadata,
which is how verification knows to measure accuracy too."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifact.parity import top1
from ..cache import cache_root
from ..data import Preprocessing

TASK = "digits"
CLASSES = 10
HELD_OUT_FRACTION = 0.25
METADATA_KEY = "mnv4_task"
TRAINING_VERSION = 1  # part of the cache key: raise it whenever the data, the split or the training loop change


@dataclass(frozen=True)
class Recipe:
    variant: str
    resolution: int = 64  # at 64 px a hybrid's attention still sees 4x4 queries and 2x2 keys
    epochs: int = 6
    batch: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0

    def key(self) -> str:
        """What the checkpoint depends on: the recipe, the training code, the variant's block specs and torch's
        version."""
        from .specs import get_spec

        text = json.dumps({**asdict(self), "training": TRAINING_VERSION, "spec": repr(get_spec(self.variant)),
                           "torch": torch.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # NCHW float32, normalised like the model's eval transform
    labels: np.ndarray  # int64


def digits(preprocessing: Preprocessing) -> tuple[Split, Split]:
    """(training, held-out) digits at the preprocessing's resolution: the same seeded split every time."""
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = torch.from_numpy(data.images / 16.0).float()[:, None]  # ink in [0, 1]
    size = preprocessing.resolution
    pixels = torch.nn.functional.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    pixels = pixels.clamp(0, 1).expand(-1, 3, -1, -1)
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    images = ((pixels - mean) / std).numpy().astype(np.float32)
    order = np.random.default_rng(0).permutation(len(images))
    held_out = order[: int(len(order) * HELD_OUT_FRACTION)]
    training = order[int(len(order) * HELD_OUT_FRACTION):]
    labels = data.target.astype(np.int64)
    return Split(images[training], labels[training]), Split(images[held_out], labels[held_out])


def cache_dir() -> Path:
    return cache_root() / "fixtures"


def trained_fixture(variant: str, recipe: Recipe | None = None, progress=lambda message: None) -> Path:
    """The path of `variant` trained on the digits (from the cache, or trained now and cached)."""
    from ..artifact.files import exclusive, writable_folder

    recipe = recipe or Recipe(variant)
    path = cache_dir() / f"{TASK}-{variant}-r{recipe.resolution}-{recipe.key()}.safetensors"
    writable_folder(path.parent, "the fixture cache")  # before minutes of training, not after
    with exclusive(path):  # concurrent processes (two test workers, two shells) train it once
        if path.is_file() and task_of(path) != TASK:  # an unreadable or foreign file where the checkpoint goes
            progress(f"the cached {path.name} cannot be read: training it again")
            path.unlink()
        if not path.is_file():
            _train_and_save(variant, recipe, path, progress)
    return path


def _train_and_save(variant: str, recipe: Recipe, path: Path, progress) -> None:
    from safetensors.torch import save_file

    from ..artifact.files import partial_path, publish, remove_artifact
    from .factory import create_model

    torch.manual_seed(recipe.seed)  # the initialisation
    model = create_model(variant, num_classes=CLASSES)
    preprocessing = model.preprocessing.at(recipe.resolution)
    training, held_out = digits(preprocessing)
    _train(model, training, recipe, progress)
    accuracy = top1(predict(model, held_out.images), held_out.labels)
    metadata = {METADATA_KEY: TASK, "resolution": str(recipe.resolution), "held_out_top1": f"{accuracy:.4f}",
                "recipe": json.dumps(asdict(recipe))}
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        save_file(state, str(partial), metadata=metadata)
        publish(partial, path)
    finally:
        remove_artifact(partial)


def _train(model: torch.nn.Module, training: Split, recipe: Recipe, progress) -> None:
    generator = torch.Generator().manual_seed(recipe.seed)  # the order of the examples
    images, labels = torch.from_numpy(training.images), torch.from_numpy(training.labels)
    steps_per_epoch = -(-len(images) // recipe.batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate,
                                                   total_steps=recipe.epochs * steps_per_epoch)
    model.train()
    for epoch in range(recipe.epochs):
        progress(f"training {model.variant} on digits: epoch {epoch + 1}/{recipe.epochs}")
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), recipe.batch):
            batch = order[start:start + recipe.batch]
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()


def predict(runner, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of a model or a runner on `images`, `batch` at a time."""
    from ..artifact.parity import run_batched

    if isinstance(runner, torch.nn.Module):
        model = runner

        def runner(chunk: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(chunk)).numpy()

    return run_batched(runner, images, batch)


def _metadata(checkpoint: str | Path | None) -> dict:
    if checkpoint is None or Path(checkpoint).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), "pt") as handle:
            return handle.metadata() or {}
    except Exception:  # noqa: BLE001 (an unreadable checkpoint is reported where it is loaded)
        return {}


def task_of(checkpoint: str | Path | None) -> str | None:
    """The task a checkpoint was trained on by mnv4 (from its safetensors metadata), else None."""
    return _metadata(checkpoint).get(METADATA_KEY)


def held_out_for(checkpoint: str | Path | None, preprocessing: Preprocessing) -> tuple[Split | None, dict | None]:
    """What verification measures of the task: (the held-out split, None) for the fixture at the resolution
    it was trained at; (None, a record saying why not) at another, where its accuracy would mean nothing
    (digits trained at 64 px are not recognised at 384); (None, None) for any other checkpoint."""
    metadata = _metadata(checkpoint)
    if metadata.get(METADATA_KEY) != TASK:
        return None, None
    trained_at = int(metadata["resolution"])
    if preprocessing.resolution != trained_at:
        return None, {"task": TASK, "passed": None, "status": f"not measured: the fixture was trained at {trained_at} "
                      f"px and the artifact takes {preprocessing.resolution} px"}
    return digits(preprocessing)[1], None


def held_out_accuracy(checkpoint: str | Path) -> float:
    """The held-out top-1 that training measured, in PyTorch float32 at the training resolution."""
    return float(_metadata(checkpoint)["held_out_top1"])
