"""TFLite metadata proved by its consumer: MediaPipe Tasks' ImageClassifier loads image-input models that carry
mnv4's metadata (mnv4/export/tflite_metadata.py), names the classes from the packed labels.txt and ranks them as
LiteRT's interpreter does on the same file and pixels: a float32 model taking pixels 0..255, and an int8 model with
uint8 input and output. The images are the parity photos at the model's 64 px, so that MediaPipe's resize (it
stretches the whole image to the input's size) is the identity."""
import json

import mediapipe as mp
import numpy as np
import pytest
import torch
from conftest import seeded
from mediapipe.tasks.python import BaseOptions
from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

from mnv4.artifact import tflite_metadata_schema_generated as schema
from mnv4.artifact.tflite_metadata import read_metadata
from mnv4.data import IMAGENET_MEAN, IMAGENET_STD
from mnv4.errors import MNV4Error
from mnv4.export.tflite_metadata import uint8_io, with_metadata

LABELS = [f"made-up class {index:04d}" for index in range(1000)]
PREPROCESSING = json.dumps({"resolution": 64, "layout": "NHWC", "scale": "0-255", "normalized": "inside the model"})
DESCRIBED = {"name": "MobileNetV4 conv_small", "description": "conv_small at 64 px, image input", "version": "1",
             "author": "mnv4", "license": "Apache-2.0"}


class ImageInput(torch.nn.Module):
    """The model as an image-input app calls it: NHWC float32 RGB pixels 0..255, ImageNet normalization inside."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", 255 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.permute(0, 3, 1, 2) - self.mean) / self.std)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """The parity photos (and random-pixel images) back as uint8 NHWC pixels."""
    reference = seeded("conv_small")
    mean, std = (np.asarray(values).reshape(1, 3, 1, 1) for values in (IMAGENET_MEAN, IMAGENET_STD))
    images = np.clip(np.rint((reference.inputs * std + mean) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def float_model(pixels) -> bytes:
    import litert_torch

    litert_torch.config.show_progress = False
    module = ImageInput(seeded("conv_small").model).eval()
    return bytes(litert_torch.convert(module, (torch.from_numpy(pixels[:1]).float(),)).model_content())


def litert_scores(model: bytes, image: np.ndarray) -> np.ndarray:
    """The output for one HWC uint8 image in LiteRT's interpreter, dequantized where it is quantized."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    (model_input,), (model_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(model_input["index"], image[None].astype(model_input["dtype"]))
    interpreter.invoke()
    scores = interpreter.get_tensor(model_output["index"])[0].astype(np.float32)
    scale, zero_point = model_output["quantization"]
    return scale * (scores - zero_point) if scale else scores


def mediapipe_categories(model: bytes, images: np.ndarray, tmp_path) -> list:
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=5)
    with ImageClassifier.create_from_options(options) as classifier:
        return [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=image)).classifications[0].categories
                for image in images]


def check_as_litert(model: bytes, images: np.ndarray, tmp_path) -> None:
    """MediaPipe's top 5 are LiteRT's, by name and score, for every image; its top 1 is LiteRT's argmax (one of them
    where a quantized output ties: MediaPipe orders equal scores its own way)."""
    for image, categories in zip(images, mediapipe_categories(model, images, tmp_path)):
        scores = litert_scores(model, image)
        indices = [category.index for category in categories]
        assert [category.category_name for category in categories] == [LABELS[index] for index in indices]
        mediapipe_scores = [category.score for category in categories]
        np.testing.assert_allclose(mediapipe_scores, scores[indices], rtol=1e-5)
        np.testing.assert_allclose(mediapipe_scores, np.sort(scores)[::-1][:5], rtol=1e-5)
        assert categories[0].category_name in {LABELS[index] for index in np.flatnonzero(scores == scores.max())}


def test_float_image_input_classifies_in_mediapipe_with_its_labels(float_model, pixels, tmp_path):
    described = with_metadata(float_model, **DESCRIBED, input_is_image=True, labels=LABELS,
                              preprocessing_json=PREPROCESSING)
    check_as_litert(described, pixels, tmp_path)
    # The model itself is untouched: the same logits.
    np.testing.assert_array_equal(litert_scores(described, pixels[0]), litert_scores(float_model, pixels[0]))
    assert read_metadata(described) == {**DESCRIBED, "min_parser_version": "1.0.0", "labels": LABELS,
                                        "preprocessing": json.loads(PREPROCESSING)}
    assert read_metadata(float_model) is None
    # Written again, the metadata and files are replaced, not added to; the same bytes.
    assert with_metadata(described, **DESCRIBED, input_is_image=True, labels=LABELS,
                         preprocessing_json=PREPROCESSING) == described


def test_int8_model_with_uint8_io_classifies_in_mediapipe(float_model, pixels, tmp_path):
    from mnv4.export.tflite import quantize_static

    int8_io, _ = quantize_static(float_model, pixels.astype(np.float32), int8_io=True)
    described = with_metadata(uint8_io(int8_io), **DESCRIBED, input_is_image=True, labels=LABELS)
    check_as_litert(described, pixels, tmp_path)
    # The uint8 edges only shift by 128: the int8 model's own output, exactly.
    image = pixels[0]
    np.testing.assert_allclose(litert_scores(described, image),
                               litert_scores(int8_io, (image.astype(np.int16) - 128).astype(np.int8)), rtol=1e-6)
    assert read_metadata(described)["labels"] == LABELS


def test_mediapipe_refuses_what_the_metadata_and_uint8_io_are_for(float_model, tmp_path):
    """A float32 input without NormalizationOptions, and int8 input or output: what makes the two writers necessary."""
    with pytest.raises(FileNotFoundError, match="requires specifying NormalizationOptions"):
        mediapipe_categories(float_model, [], tmp_path)
    with pytest.raises(MNV4Error, match="int8 input and output"):
        uint8_io(float_model)


def test_labels_must_name_each_class_on_one_line(float_model):
    with pytest.raises(MNV4Error, match="999 labels for a model of 1000 classes"):
        with_metadata(float_model, **DESCRIBED, input_is_image=True, labels=LABELS[1:])
    with pytest.raises(MNV4Error, match="line break"):
        with_metadata(float_model, **DESCRIBED, input_is_image=True, labels=["two\nlines", *LABELS[1:]])


def test_the_schema_is_the_one_mediapipe_reads():
    """The generated schema module has MediaPipe's tables, fields and enum values (MediaPipe ships its own copy)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mediapipe_schema

    def shape(module) -> dict:
        """Each class's public names (an enum's values), and each object-API class's fields."""
        classes = {name: value for name, value in vars(module).items() if isinstance(value, type)}
        return {name: ({key: value if isinstance(value, int) else "def" for key, value in vars(cls).items()
                        if not key.startswith("_")}, sorted(vars(cls())) if name.endswith("T") else None)
                for name, cls in classes.items()}

    assert shape(schema) == shape(mediapipe_schema)
