"""`mnv4 export --format tflite --image-input` drops into MediaPipe Tasks' ImageClassifier (pip mediapipe, the test
extra), proved by MediaPipe itself: it loads the file as exported (its TFLite metadata: an RGB image input, the label
file, mnv4/export/tflite_metadata.py), and names the same top class as `mnv4 run` for each verification photo, at
float32 and at int8 with integer I/O (uint8: MediaPipe refuses int8), with ImageNet's names or the user's own
(--labels). MediaPipe stretches an image to the model's input size: the photos are given at the artifact's
resolution, resized and cropped as `mnv4 run` does to the photo itself, so that MediaPipe's own resize is the
identity."""
import re
from pathlib import Path

import mediapipe as mp
import numpy as np
import pytest
from conftest import DIGIT_NAMES, frames
from mediapipe.tasks.python import BaseOptions
from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions
from PIL import Image

from mnv4.artifact.manifest import read_manifest
from mnv4.artifact.tflite_metadata import read_metadata
from mnv4.data import imagenet_class_names, photos
from mnv4.errors import MNV4Error
from mnv4.export.tflite_metadata import uint8_io, with_metadata

ARTIFACTS = {
    "fp32, ImageNet's names": {"image_input": True},
    "int8 with uint8 I/O, the user's names": {"fixture": True, "precision": "int8", "int8_io": True,
                                               "image_input": True, "labels": DIGIT_NAMES},
}


def categories_of(artifact: Path, images: np.ndarray) -> list:
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(artifact)), max_results=3)
    with ImageClassifier.create_from_options(options) as classifier:
        return [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=image)).classifications[0].categories
                for image in images]


@pytest.mark.devices  # with the other places artifacts run: the default suite keeps to its 8 minutes
@pytest.mark.parametrize("options", ARTIFACTS.values(), ids=ARTIFACTS)
def test_mediapipe_names_the_top_class_that_mnv4_run_prints(options, store, cli, tmp_path):
    artifact = store.get("tflite", **options)
    manifest = read_manifest(artifact)
    names = manifest.labels or imagenet_class_names()
    if "labels" in options:
        assert names == DIGIT_NAMES.read_text().split()
        assert (manifest.facts["input_dtype"], manifest.facts["output_dtype"]) == ("uint8", "uint8")
        assert manifest.parity["task"]["passed"], manifest.parity["task"]  # the digits' held-out accuracy kept
    images = frames(manifest)
    for (name, photo), categories in zip(photos().items(), categories_of(artifact, images)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(photo).save(path)
        result = cli("run", artifact, path, "--top", "1")
        assert result.returncode == 0, result.stderr
        # A quantized output can tie: MediaPipe orders equal scores its own way.
        tied = {category.category_name for category in categories if category.score == categories[0].score}
        printed = re.fullmatch(r"1\. (.+) \(index \d+\): [\d.]+%", result.stdout.strip())
        assert printed and tied <= set(names) and printed[1] in tied, (result.stdout, tied)


def test_the_metadata_reads_back_as_exported(store):
    artifact = store.get("tflite", image_input=True)
    manifest = read_manifest(artifact)
    metadata = read_metadata(artifact.read_bytes())
    assert metadata["labels"] == imagenet_class_names() and metadata["author"] == "mnv4"
    assert metadata["name"] == "MobileNetV4 conv_small" and metadata["version"] == manifest.versions["mnv4"]
    preprocessing = metadata["preprocessing"]
    assert (preprocessing["mean"], preprocessing["std"]) == (manifest.preprocessing["mean"], manifest.preprocessing["std"])
    assert (preprocessing["layout"], preprocessing["scale"], preprocessing["normalised_in_model"]) == ("NHWC", "0-255", True)


def test_the_writers_refuse_what_they_cannot_describe(store):
    model = store.get("tflite", image_input=True).read_bytes()
    described = {"name": "m", "description": "d", "version": "1", "author": "a", "license": "", "input_is_image": True}
    with pytest.raises(MNV4Error, match="999 labels for a model of 1000 classes"):
        with_metadata(model, **described, labels=imagenet_class_names()[1:])
    with pytest.raises(MNV4Error, match="line break"):
        with_metadata(model, **described, labels=["two\nlines", *imagenet_class_names()[1:]])
    with pytest.raises(MNV4Error, match="int8 input and output"):
        uint8_io(model)


def test_the_schema_is_the_one_mediapipe_reads():
    """The generated schema module has MediaPipe's tables, fields and enum values (MediaPipe ships its own copy)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mediapipe_schema

    from mnv4.artifact import tflite_metadata_schema_generated as schema

    def shape(module) -> dict:
        """Each class's public names (an enum's values), and each object-API class's fields."""
        classes = {name: value for name, value in vars(module).items() if isinstance(value, type)}
        return {name: ({key: value if isinstance(value, int) else "def" for key, value in vars(cls).items()
                        if not key.startswith("_")}, sorted(vars(cls())) if name.endswith("T") else None)
                for name, cls in classes.items()}

    assert shape(schema) == shape(mediapipe_schema)
