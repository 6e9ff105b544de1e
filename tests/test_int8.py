"""int8 across formats: the calibration images (built-in photos that are never the verification ones, a
directory, the trained fixture's own task) and every bad int8 option, refused in one line with exit 2 before
anything is left at the output path. Each format's quantized arithmetic is tested in its own test_int8_* file."""
import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, run_cli

from mnv4.artifact.manifest import manifest_path
from mnv4.calibration import (
    DEFAULT_COUNT,
    builtin_calibration,
    builtin_photos,
    directory_calibration,
    looks_like_noise,
)
from mnv4.data import Preprocessing, photos

PREPROCESSING = Preprocessing(64, 0.875)


def test_the_built_in_calibration_photos_are_never_verification_photos():
    verification = [image for image in photos().values()]
    for name, photo in builtin_photos().items():
        assert name not in photos()
        assert not any(photo.shape == image.shape and np.array_equal(photo, image) for image in verification), name
        assert not looks_like_noise(photo), name


def test_the_built_in_calibration_is_seeded_crops_through_the_eval_transform():
    first, again = builtin_calibration(PREPROCESSING), builtin_calibration(PREPROCESSING)
    assert first.images.shape == (DEFAULT_COUNT, 3, 64, 64) and first.images.dtype == np.float32
    assert np.array_equal(first.images, again.images) and first.names == again.names
    assert len({image.tobytes() for image in first.images}) == DEFAULT_COUNT  # every crop differs
    assert first.record()["count"] == DEFAULT_COUNT and "built-in photos" in first.record()["source"]


def write_images(folder, count, noise=False):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    gradient = np.linspace(0, 255, 64)[None, :, None] * np.ones((64, 1, 3))
    for index in range(count):
        pixels = rng.integers(0, 256, (64, 64, 3)) if noise else (gradient + 3 * index) % 256
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:03d}.png")
    return folder


def test_a_directory_gives_its_images_spread_evenly_and_preprocessed(tmp_path):
    folder = write_images(tmp_path / "images", 10)
    (folder / "notes.txt").write_text("not an image")  # other files are not calibration images
    calibration = directory_calibration(folder, PREPROCESSING, 4)
    assert calibration.names == ["000.png", "003.png", "006.png", "009.png"]
    expected = PREPROCESSING(Image.open(folder / "003.png"))
    assert np.array_equal(calibration.images[1], expected)
    assert len(directory_calibration(folder, PREPROCESSING).names) == 10  # all, when fewer than the default


def test_noise_is_not_a_photo():
    rng = np.random.default_rng(1)
    assert looks_like_noise(rng.integers(0, 256, (64, 64, 3)))
    assert looks_like_noise(np.full((64, 64, 3), 128))  # blank
    assert not any(looks_like_noise(photo) for photo in photos().values())


def export_int8(tmp_path, *options, fmt="tflite", precision="int8"):
    output = tmp_path / f"model.{ {'tflite': 'tflite', 'onnx': 'onnx', 'executorch': 'pte', 'coreml': 'mlpackage'}[fmt]}"
    result = run_cli("export", "--format", fmt, "--precision", precision, "--resolution", "64", "--output", output,
                     *options)
    return result, output


@pytest.mark.parametrize("case, make_options, message", [
    ("calibration at fp32", lambda tmp: ["--calibration", write_images(tmp / "images", 3)],
     "--calibration is for --precision int8"),
    ("count at fp16", lambda tmp: ["--calibration-count", "8"], "--calibration-count is for --precision int8"),
    ("empty directory", lambda tmp: ["--calibration", (tmp / "empty").mkdir() or tmp / "empty"],
     "no images in calibration directory"),
    ("missing directory", lambda tmp: ["--calibration", tmp / "absent"], "calibration directory not found"),
    ("a file, not a directory", lambda tmp: ["--calibration", write_images(tmp / "images", 1) / "000.png"],
     "is not a directory"),
    ("more than there are", lambda tmp: ["--calibration", write_images(tmp / "images", 3), "--calibration-count", "4"],
     "--calibration-count 4 is more than the 3 images"),
    ("count zero", lambda tmp: ["--calibration-count", "0"], "--calibration-count must be from 1"),
    ("accuracy bound", lambda tmp: ["--max-accuracy-loss", "-1"], "--max-accuracy-loss is in points of top-1"),
])
def test_bad_calibration_options_are_refused_before_any_work(tmp_path, case, make_options, message):
    options = make_options(tmp_path)
    precision = "fp32" if case == "calibration at fp32" else "fp16" if case == "count at fp16" else "int8"
    result, output = export_int8(tmp_path, *options, precision=precision)
    assert_one_line_error(result, message)
    assert not output.exists() and not manifest_path(output).exists()


@pytest.mark.parametrize("fmt, precision, options, message", [
    ("onnx", "int8-weights", [], "ONNX export supports precision fp32, fp16 or int8, not 'int8-weights'"),
    ("executorch", "int8-weights", [], "ExecuTorch export supports precision fp32, fp16 or int8, not 'int8-weights'"),
    ("onnx", "int4", [], "unknown precision 'int4'"),
    ("onnx", "int8", ["--int8-io"], "--int8-io is for --precision int8 of tflite"),
    ("tflite", "fp32", ["--int8-io"], "--int8-io is for --precision int8 of tflite"),
    ("tflite", "int8-weights", ["--int8-io"], "--int8-io is for --precision int8 of tflite"),
    ("executorch", "int8", ["--dynamic-batch"], "--dynamic-batch is not available for ExecuTorch int8"),
])
def test_a_precision_or_int8_option_a_format_lacks_is_refused(tmp_path, fmt, precision, options, message):
    result, output = export_int8(tmp_path, *options, fmt=fmt, precision=precision)
    assert_one_line_error(result, message)
    assert not output.exists()


def test_noise_alone_and_an_unreadable_image_are_refused_with_nothing_written(tmp_path):
    noise = write_images(tmp_path / "noise", 4, noise=True)
    result, output = export_int8(tmp_path, "--calibration", noise)
    assert_one_line_error(result, "look like random noise")
    assert not output.exists() and not manifest_path(output).exists()

    broken = write_images(tmp_path / "broken", 4)
    (broken / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    result, output = export_int8(tmp_path, "--calibration", broken)
    assert_one_line_error(result, f"cannot read image {broken / '002.png'}")
    assert not output.exists() and not manifest_path(output).exists()


def test_an_int8_export_of_the_fixture_records_its_calibration_and_is_judged_by_accuracy(tmp_path):
    """End to end through the CLI: the fixture calibrates on its own training digits by default, the manifest
    says so and what stayed float, and `mnv4 verify` applies the accuracy bound it is given (else the export's)."""
    import json

    from mnv4.model.task import trained_fixture

    output = tmp_path / "digits.tflite"
    result = run_cli("export", "--format", "tflite", "--precision", "int8", "--weights", trained_fixture("conv_small"),
                     "--resolution", "64", "--output", output, "--calibration-count", "32", "--max-accuracy-loss", "2")
    assert result.returncode == 0, result.stderr
    assert "calibrated on 32 images: digits training split" in result.stderr and "in float:" in result.stderr
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["precision"] == "int8" and manifest["compute_dtype"] == "int8"
    assert manifest["calibration"]["count"] == 32 and manifest["calibration"]["source"].startswith("digits training")
    assert all(name.startswith("digits[") for name in manifest["calibration"]["images"])
    assert manifest["quantization"]["quantized_ops"] > 0 and isinstance(manifest["quantization"]["float_ops"], dict)
    task = manifest["parity"]["task"]
    assert task["passed"] and task["max_top1_loss_points"] == 2 and task["top1_loss_points"] <= 1
    for options, bound in (((), 2), (("--max-accuracy-loss", "0.5"), 0.5)):
        verified = run_cli("verify", output, "--json", *options)
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["task"]["max_top1_loss_points"] == bound


def test_int8_limits_judge_the_photos_and_record_the_random_inputs():
    """Random pixels lie outside any calibration set: an int8 artifact far off there but close on the photos
    passes; far off on one photo, it fails, and the message names the photo."""
    from mnv4.artifact.parity import truth_breaches

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((11, 10))
    close, far = truth + 0.05 * rng.standard_normal((11, 10)), -truth
    off_on_random = np.concatenate([close[:9], far[9:]])
    assert truth_breaches(truth, truth, off_on_random, "int8", photos=9) == []
    assert truth_breaches(truth, truth, off_on_random, "fp16", photos=9)  # other precisions judge every input
    off_on_a_photo = np.concatenate([close[:3], far[3:4], close[4:]])
    (failure, *_) = truth_breaches(truth, truth, off_on_a_photo, "int8", photos=9)
    assert "on photo 3" in failure
