"""int8 across formats: the calibration images (built-in photos that are never the verification ones, a directory,
the trained fixture's own task) and a bad calibration directory, refused in one line with exit 2 before anything is
left at the output path. Each format's quantized arithmetic is tested in its format's file (test_onnx.py, ...)."""
import json

import numpy as np
import pytest
from conftest import assert_one_line_error, trained
from PIL import Image

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


def export_int8(cli, tmp_path, *options, fmt="onnx", precision="int8"):
    output = tmp_path / "model.onnx"
    return cli("export", "--format", fmt, "--precision", precision, "--resolution", "64", "--output", output,
               *options), output


@pytest.mark.parametrize("case, make_options, message", [
    ("empty directory", lambda tmp: ["--calibration", (tmp / "empty").mkdir() or tmp / "empty"],
     "no images in calibration directory"),
    ("missing directory", lambda tmp: ["--calibration", tmp / "absent"], "calibration directory not found"),
    ("a file, not a directory", lambda tmp: ["--calibration", write_images(tmp / "images", 1) / "000.png"],
     "is not a directory"),
    ("more than there are", lambda tmp: ["--calibration", write_images(tmp / "images", 3), "--calibration-count", "4"],
     "--calibration-count 4 is more than the 3 images"),
])
def test_bad_calibration_directories_are_refused_before_any_work(cli, tmp_path, case, make_options, message):
    """Which precisions take --calibration and --calibration-count, and their bounds, are the option table's
    (test_tables.py); what the directory holds is checked here, before the model is built."""
    result, output = export_int8(cli, tmp_path, *make_options(tmp_path))
    assert_one_line_error(result, message)
    assert not output.exists() and not manifest_path(output).exists()


def test_noise_alone_and_an_unreadable_image_are_refused_with_nothing_written(cli, tmp_path):
    noise = write_images(tmp_path / "noise", 4, noise=True)
    result, output = export_int8(cli, tmp_path, "--calibration", noise)
    assert_one_line_error(result, "look like random noise")
    assert not output.exists() and not manifest_path(output).exists()

    broken = write_images(tmp_path / "broken", 4)
    (broken / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    result, output = export_int8(cli, tmp_path, "--calibration", broken)
    assert_one_line_error(result, f"cannot read image {broken / '002.png'}")
    assert not output.exists() and not manifest_path(output).exists()


def test_a_directory_of_real_images_calibrates_the_export(cli, tmp_path):
    """`--calibration DIR` end to end: the manifest names the directory and the images it took, spread over it."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index, photo in enumerate(list(builtin_photos().values())[:6]):
        Image.fromarray(photo).save(folder / f"{index:03d}.png")
    result, output = export_int8(cli, tmp_path, "--calibration", folder, "--calibration-count", "3")
    assert result.returncode == 0, result.stderr
    calibration = json.loads(manifest_path(output).read_text())["calibration"]
    assert calibration == {"source": str(folder.resolve()), "count": 3, "images": ["000.png", "002.png", "005.png"]}


def test_an_int8_export_of_the_fixture_records_its_calibration_and_is_judged_by_accuracy(cli, tmp_path):
    """End to end through the CLI: the fixture calibrates on its own training digits by default, the summary and the
    manifest say so and what stayed float, and `mnv4 verify` applies the accuracy bound it is given (else the
    export's)."""
    result, output = export_int8(cli, tmp_path, "--weights", trained(), "--calibration-count", "32",
                                 "--max-accuracy-loss", "2")
    assert result.returncode == 0, result.stderr
    assert "calibrated on 32 images: digits training split" in result.stderr and "in float:" in result.stderr
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["precision"] == "int8" and manifest["compute_dtype"] == "int8"
    assert manifest["calibration"]["count"] == 32 and manifest["calibration"]["source"].startswith("digits training")
    assert manifest["quantization"]["calibration"]["images"] == 32
    assert all(name.startswith("digits[") for name in manifest["calibration"]["images"])
    task = manifest["parity"]["task"]
    assert task["passed"] and task["max_top1_loss_points"] == 2 and task["top1_loss_points"] <= 1
    for options, bound in (((), 2), (("--max-accuracy-loss", "0.5"), 0.5)):
        verified = cli("verify", output, "--json", *options)
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["task"]["max_top1_loss_points"] == bound


def test_int8_limits_judge_the_photos_and_record_the_random_inputs():
    """Random pixels lie outside any calibration set: an int8 artifact far off there but close on the photos
    passes; far off on one photo, it fails, and the message names the photo."""
    from mnv4.artifact.parity import truth_breaches
    from mnv4.artifact.precisions import FP16, INT8

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((11, 10))
    close, far = truth + 0.05 * rng.standard_normal((11, 10)), -truth
    off_on_random = np.concatenate([close[:9], far[9:]])
    assert truth_breaches(truth, truth, off_on_random, INT8.limits, photos=9) == []
    assert truth_breaches(truth, truth, off_on_random, FP16.limits, photos=9)  # other precisions judge every input
    off_on_a_photo = np.concatenate([close[:3], far[3:4], close[4:]])
    (failure, *_) = truth_breaches(truth, truth, off_on_a_photo, INT8.limits, photos=9)
    assert "on photo 3" in failure
