"""`--image-input` in every format: RGB pixels in (NHWC, 0 to 255, as camera frames and bitmaps are), normalised inside
the model, under one set of input and output names ('image' or 'pixels' in, 'logits' out). Each artifact is fed its
photos' pixels through its runtime's own API, by those names, as an app would, never through mnv4's runners."""
import json

import numpy as np
import pytest
from conftest import RESOLUTION, assert_one_line_error, frames

from mnv4.artifact.facts import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME
from mnv4.artifact.manifest import read_manifest
from mnv4.artifact.parity import compare
from mnv4.artifact.reference import read_reference
from mnv4.data import imagenet_class_names, photos

IMAGE_FORMATS = ("onnx", "tflite", "executorch")


def logits_in_its_runtime(fmt: str, artifact, image: np.ndarray) -> np.ndarray:
    """One image's logits from the format's own runtime, its input and output found by their names."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {IMAGE_INPUT_NAME: image})[0]
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(artifact)).get_signature_runner()
        return runner(**{IMAGE_INPUT_NAME: image})[OUTPUT_NAME]
    import torch
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(artifact)
    assert program.load_method("input_name").execute([]) == [IMAGE_INPUT_NAME]
    return program.load_method("forward").execute([torch.from_numpy(image)])[0].numpy()


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_an_app_feeds_its_frames_as_they_are(fmt, store):
    artifact = store.get(fmt, image_input=True)
    manifest = read_manifest(artifact)
    facts = manifest.facts
    assert (facts["input_kind"], facts["input_name"], facts["input_layout"], facts["input_dtype"]) == \
        ("image", IMAGE_INPUT_NAME, "NHWC", "float32")
    assert facts["input_shape"] == [1, RESOLUTION, RESOLUTION, 3]
    assert manifest.parity["passed"]
    reference = read_reference(artifact, manifest)
    images = frames(manifest)
    assert len(images) == reference.photos
    logits = np.concatenate([logits_in_its_runtime(fmt, artifact, image[None].astype(np.float32))
                             for image in images])
    parity = compare(reference.float64[:reference.photos], logits)
    assert parity.rel_err <= manifest.limits.rel_err and parity.top1_agreement == 1.0, parity


def test_every_format_names_its_input_and_output_alike(store):
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    session = onnxruntime.InferenceSession(str(store.get("onnx", dynamic_batch=True)), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME] and [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    interpreter = Interpreter(model_path=str(store.get("tflite")))
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME]}}
    assert [interpreter.get_input_details()[0]["name"], interpreter.get_output_details()[0]["name"]] == \
        [INPUT_NAME, OUTPUT_NAME]
    for fmt, options in (("coreml", {}), ("coreml", {"image_input": True}), ("executorch", {})):
        facts = read_manifest(store.get(fmt, **options)).facts
        assert facts["input_name"] == (IMAGE_INPUT_NAME if options else INPUT_NAME)
        assert facts.get("output_name", OUTPUT_NAME) == OUTPUT_NAME  # ExecuTorch's output is positional


def test_the_artifact_says_how_to_feed_it(store):
    """What an app reads of the preprocessing, in ONNX metadata and ExecuTorch constant methods: pixels 0 to 255,
    normalised by the model with the manifest's own mean and std."""
    import onnxruntime
    from executorch.runtime import Runtime

    artifact = store.get("onnx", image_input=True)
    manifest = read_manifest(artifact)
    meta = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"]).get_modelmeta()
    preprocessing = json.loads(meta.custom_metadata_map["preprocessing"])
    assert preprocessing["mean"] == manifest.preprocessing["mean"] and preprocessing["std"] == manifest.preprocessing["std"]
    assert (preprocessing["layout"], preprocessing["scale"], preprocessing["normalised_in_model"]) == ("NHWC", "0-255", True)
    assert f"Input '{IMAGE_INPUT_NAME}': float32 NHWC RGB pixels" in meta.description

    program = Runtime.get().load_program(store.get("executorch", image_input=True))

    def constant(name):
        return program.load_method(name).execute([])

    assert constant("mean") == manifest.preprocessing["mean"] and constant("std") == manifest.preprocessing["std"]
    assert (constant("input_layout"), constant("resolution"), constant("pixel_scale"), constant("image_input")) == \
        (["NHWC"], [RESOLUTION], ["0-255"], [True])
    assert constant("labels") == imagenet_class_names()


def test_run_prints_the_same_classes_for_pixels_as_for_tensors(store, cli, tmp_path):
    """`mnv4 run` feeds an image-input artifact pixels and a tensor one normalised tensors: the same classes."""
    from PIL import Image

    photo = tmp_path / "astronaut.png"
    Image.fromarray(photos()["astronaut"]).save(photo)
    image, tensor = (cli("run", store.get("onnx", **options), photo) for options in ({"image_input": True},
                                                                                      {"dynamic_batch": True}))
    assert image.returncode == tensor.returncode == 0, image.stderr + tensor.stderr
    assert image.stdout == tensor.stdout and image.stdout.count("\n") == 5


@pytest.mark.parametrize("options, message", [
    ({"nhwc": True}, "--image-input takes NHWC pixels already: drop --nhwc"),
    ({"batch": 2}, "--image-input is one image per prediction"),
])
def test_an_image_input_refuses_what_it_cannot_be(options, message, cli, tmp_path):
    flags = [f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}") for name, value in options.items()]
    result = cli("export", "--format", "tflite", "--variant", "conv_small", "--image-input", *flags,
                 "--output", tmp_path / "refused.tflite")
    assert_one_line_error(result, message)
    assert not list(tmp_path.iterdir())
