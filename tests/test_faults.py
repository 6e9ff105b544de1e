"""Faults and bad input across the CLI, tried as a new user would: damaged artifacts of every format, images of
every mode, extreme options, --force on what is not an artifact, full and read-only disks, signals, manifests
that lie, and internal errors. Each must end in one `error:` line with a documented exit code (0 ok, 1 parity
failed, 2 bad input or a damaged file, 3 internal error; 128 + N on signal N), and never leave a file behind."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, run_cli

from mnv4.artifact.files import partial_path, sha256
from mnv4.artifact.formats import FORMATS
from mnv4.artifact.manifest import manifest_path
from mnv4.data import load_image

RESOLUTION = 64  # small artifacts: what is tested is their files, not their numbers


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """conv_small exported to every format by one `mnv4 export --format all`, into a folder that held a stale
    partial file of a killed export (which the export must remove) and a live one (which it must keep)."""
    folder = tmp_path_factory.mktemp("artifacts")
    stale = partial_path(folder / "onnx.onnx", pid=2**22 + 12345)  # above any pid this kernel hands out
    stale.write_bytes(b"half an onnx file")
    manifest_path(stale).write_text("{}")
    live = partial_path(folder / "onnx.onnx", pid=os.getppid())
    live.write_bytes(b"another export still writing")
    result = run_cli("export", "--format", "all", "--variant", "conv_small", "--resolution", RESOLUTION,
                     "--output", folder, "--quiet", "--no-verify")  # verified by the tests that use it
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: no toolchain's notices either (coremltools prints some on import)
    assert not stale.exists() and not manifest_path(stale).exists() and live.exists()
    live.unlink()
    return {fmt: folder / f"{fmt}{row.suffix}" for fmt, row in FORMATS.items()}


def test_verify_prints_one_line_for_every_format(artifacts):
    """Toolchains' notices (coremltools' proxy-loading and version lines, XNNPACK's delegate) only with
    --verbose: what a CI log shows of a passing check is its verdict."""
    for artifact, result in zip(artifacts.values(), run_together(*(("verify", path) for path in artifacts.values()))):
        assert result.returncode == 0, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "PASS" in line, f"{artifact.name}: {result.stderr}"


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, photo_images):
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(photo_images["chelsea"]).save(path)
    return path


def run_together(*commands):
    """Several CLI commands at once, two at a time: each is a process that mostly waits on imports."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda command: run_cli(*command), commands))


def copy_artifact(source: Path, folder: Path) -> Path:
    target = folder / source.name
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    shutil.copyfile(manifest_path(source), manifest_path(target))
    return target


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def coreml_weights(package: Path) -> Path:
    return next(package.glob("Data/com.apple.CoreML/weights/*.bin"))


DAMAGES = {
    "truncated": lambda path: truncate(coreml_weights(path) if path.is_dir() else path),
    "empty": lambda path: (coreml_weights(path) if path.is_dir() else path).write_bytes(b""),
    "a directory": lambda path: (shutil.rmtree(path) if path.is_dir() else path.unlink(), path.mkdir()),
}
COREML_DAMAGES = {
    "broken Manifest.json": lambda path: (path / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0", "item'),
    "Manifest.json naming no model": lambda path: (path / "Manifest.json").write_text(json.dumps(
        {"fileFormatVersion": "1.0.0", "itemInfoEntries": {}, "rootModelIdentifier": "nothing"})),
    "model file garbled": lambda path: next(path.glob("Data/com.apple.CoreML/*.mlmodel")).write_bytes(b"\x07" * 99),
}
CASES = [(fmt, damage) for fmt in FORMATS for damage in DAMAGES] + [("coreml", damage) for damage in COREML_DAMAGES]


@pytest.mark.parametrize("fmt, damage", CASES)
def test_a_damaged_artifact_is_one_line_and_exit_2(fmt, damage, artifacts, photo_file, tmp_path):
    artifact = copy_artifact(artifacts[fmt], tmp_path)
    {**DAMAGES, **COREML_DAMAGES}[damage](artifact)
    # The manifest is made to agree with the damaged file, so that the runtime itself must refuse it.
    manifest = json.loads(manifest_path(artifact).read_text())
    manifest["sha256"] = sha256(artifact)
    manifest_path(artifact).write_text(json.dumps(manifest))
    for result in run_together(("verify", artifact), ("run", artifact, photo_file)):
        assert_one_line_error(result, "cannot", code=2)
        assert "PASS" not in result.stdout + result.stderr


def test_run_refuses_an_artifact_that_changed_after_export(artifacts, photo_file, tmp_path):
    artifact = copy_artifact(artifacts["onnx"], tmp_path)
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert_one_line_error(run_cli("run", artifact, photo_file), "sha256 differs", code=2)


def test_run_and_verify_name_the_key_a_manifest_lacks(artifacts, photo_file, tmp_path):
    artifact = copy_artifact(artifacts["tflite"], tmp_path)
    manifest = json.loads(manifest_path(artifact).read_text())
    del manifest["preprocessing"]["mean"]
    manifest_path(artifact).write_text(json.dumps(manifest))
    for result in run_together(("verify", artifact), ("run", artifact, photo_file)):
        assert_one_line_error(result, "missing the key 'preprocessing.mean'", str(manifest_path(artifact)))


def wide_png(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grey, RGB or RGBA), written by hand: Pillow writes 16 bits for grey levels only."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    colour_type = {2: 0, 3: 2}[pixels.ndim] if pixels.ndim == 2 or pixels.shape[2] == 3 else 6
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type,
                                                                    0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_images_decode_by_their_own_range_whatever_their_mode(photo_images, tmp_path):
    photo = photo_images["chelsea"]
    grey8 = np.asarray(Image.fromarray(photo).convert("L"))
    wide_png(tmp_path / "grey16.png", grey8.astype(np.uint16) * 257)
    wide_png(tmp_path / "rgb16.png", photo.astype(np.uint16) * 257)
    Image.fromarray(grey8.astype(np.float32) / 255).save(tmp_path / "grey_float.tiff")
    alpha = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    alpha[:10, :10, 3] = 0  # a transparent corner shows the background
    Image.fromarray(alpha).save(tmp_path / "rgba.png")
    Image.fromarray(photo).quantize(64).save(tmp_path / "palette.png")

    grey_rgb = np.repeat(grey8[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(load_image(tmp_path / "grey16.png")), grey_rgb)
    assert np.array_equal(np.asarray(load_image(tmp_path / "rgb16.png")), photo)
    assert np.abs(np.asarray(load_image(tmp_path / "grey_float.tiff"), np.int16) - grey_rgb).max() <= 1
    rgba = np.asarray(load_image(tmp_path / "rgba.png"))
    assert (rgba[:10, :10] == 255).all() and np.array_equal(rgba[10:], photo[10:])
    palette = np.asarray(load_image(tmp_path / "palette.png"), np.int16)
    assert palette.shape == photo.shape and np.abs(palette - photo).mean() < 8


def test_an_image_whose_scale_cannot_be_told_is_refused(artifacts, tmp_path):
    Image.fromarray(np.full((32, 32), 7e5, np.float32)).save(tmp_path / "radiance.tiff")
    (tmp_path / "empty.png").write_bytes(b"")
    for image, fragment in (("radiance.tiff", "neither in [0, 1]"), ("empty.png", "cannot read image")):
        assert_one_line_error(run_cli("run", artifacts["onnx"], tmp_path / image), fragment)


def test_a_16_bit_photo_gets_the_prediction_of_its_8_bit_twin(artifacts, photo_images, tmp_path):
    Image.fromarray(photo_images["coffee"]).save(tmp_path / "coffee8.png")
    wide_png(tmp_path / "coffee16.png", photo_images["coffee"].astype(np.uint16) * 257)
    eight, sixteen = (run_cli("run", artifacts["onnx"], tmp_path / name) for name in ("coffee8.png", "coffee16.png"))
    assert eight.returncode == 0 and sixteen.returncode == 0, eight.stderr + sixteen.stderr
    assert eight.stdout == sixteen.stdout


@pytest.mark.parametrize("args, fragment", [
    (("--resolution", "100000"), "--resolution must be from 32 to 1024"),
    (("--batch", "100000"), "--batch must be from 1 to 1024"),
    (("--threads", "100000"), "--threads must be from 1 to 256"),
])
def test_extreme_options_are_refused_before_any_work(args, fragment, tmp_path):
    started = time.perf_counter()
    assert_one_line_error(run_cli("export", "--format", "onnx", *args, "--output", tmp_path / "m.onnx"), fragment)
    assert time.perf_counter() - started < 60  # refused, not attempted (an attempt at 100000 px exhausts memory)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_before_the_model_is_built(artifacts):
    # The checkpoint does not exist: had the model been built first, that would be the error.
    result = run_cli("export", "--format", "onnx", "--output", artifacts["onnx"], "--weights", "absent.safetensors")
    assert_one_line_error(result, "exists; pass --force")


@pytest.mark.parametrize("fmt", ["onnx", "coreml"])
def test_force_replaces_an_artifact_never_an_unrelated_directory(fmt, tmp_path):
    output = tmp_path / f"photos{FORMATS[fmt].suffix}"
    output.mkdir()
    (output / "holiday.jpg").write_bytes(b"precious")
    assert_one_line_error(run_cli("export", "--format", fmt, "--output", output, "--force"),
                          "not a", "artifact", "--force replaces only an artifact")
    assert (output / "holiday.jpg").read_bytes() == b"precious"


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs mounted for the test: an ONNX conv_small (15 MB) cannot fit."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small filesystem needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk):
    result = run_cli("export", "--format", "onnx", "--output", small_disk / "m.onnx", "--no-verify")
    assert_one_line_error(result, "cannot write", "m.onnx")
    assert list(small_disk.iterdir()) == []


def test_a_read_only_disk_is_one_line_before_any_work(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert_one_line_error(run_cli("export", "--format", "onnx", "--output", small_disk / "m.onnx"),
                          "cannot write to", "read-only")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_export_cleans_up_the_partial_file(signum, tmp_path):
    output = tmp_path / "m.onnx"
    process = subprocess.Popen([sys.executable, "-m", "mnv4", "export", "--format", "onnx", "--output", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".m.partial-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".m.partial-*")), "the export never wrote its partial file"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"error: interrupted by {signal.Signals(signum).name}"], stderr
    assert list(tmp_path.iterdir()) == []


def run_with_a_bug(*args):
    """The CLI with a bug planted in the model summary: what mnv4 does with an error that is not the user's."""
    code = ("import sys, mnv4.model.profile as profile, mnv4.cli as cli\n"
            "def broken(*args, **kwargs):\n    raise RuntimeError('summary table overflowed')\n"
            "profile.summary = broken\nraise SystemExit(cli.main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_an_internal_error_is_one_line_with_exit_3_and_debug_shows_the_traceback():
    result = run_with_a_bug("info", "--variant", "conv_small")
    assert_one_line_error(result, "internal error", "summary table overflowed", "--debug", code=3)
    debug = run_with_a_bug("info", "--variant", "conv_small", "--debug")
    assert debug.returncode == 3 and "Traceback" in debug.stderr and "summary table overflowed" in debug.stderr


def test_usage_errors_are_one_line_and_exit_2():
    assert_one_line_error(run_cli("export", "--no-such-option"), "No such option", "mnv4 export --help")
    assert_one_line_error(run_cli("info"), "Missing option")
