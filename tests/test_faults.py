"""Faults and bad input across the CLI, tried as a new user would: damaged artifacts of every format, images of
every mode, extreme options, --force on what is not an artifact, full and read-only disks, signals, manifests
that lie, and internal errors. Each must end in one `error:` line with a documented exit code (0 ok, 1 parity
failed, 2 bad input or a damaged file, 3 internal error; 128 + N on signal N), and never leave a file behind.
Commands run in this process (`cli`) except where a fresh process is the point (signals, notices on import)."""
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
from conftest import assert_one_line_error, copy_artifact, manifest_of, missing_system_part, rewrite_manifest, run_cli
from PIL import Image

from mnv4.artifact.files import companion_paths, partial_path, sha256
from mnv4.artifact.formats import FORMATS
from mnv4.artifact.manifest import manifest_path
from mnv4.data import load_image

# The stored artifact of each format that these tests damage (copies of) and run.
REQUESTS = {"onnx": {"dynamic_batch": True}, "tflite": {}, "executorch": {}, "coreml": {}, "ort": {}, "openvino": {},
            "ncnn": {}}


@pytest.fixture(scope="module")
def artifacts(store):
    assert set(REQUESTS) == set(FORMATS)
    return {fmt: store.get(fmt, **options) for fmt, options in REQUESTS.items()}


def test_format_all_exports_every_format_quietly_and_cleans_up_after_killed_exports(tmp_path):
    """`--format all --output FOLDER` in a fresh process (toolchains print notices on import): every format's artifact
    and manifest in FOLDER/<format><suffix>; --quiet: nothing on stderr, not even a toolchain's notice; --json: the
    manifests. The folder held a stale partial file of a killed export (which the export must remove) and a live one
    (which it must keep)."""
    stale = partial_path(tmp_path / "onnx.onnx", pid=2**22 + 12345)  # above any pid this kernel hands out
    stale.write_bytes(b"half an onnx file")
    manifest_path(stale).write_text("{}")
    live = partial_path(tmp_path / "onnx.onnx", pid=os.getppid())
    live.write_bytes(b"another export still writing")
    result = run_cli("export", "--format", "all", "--resolution", 64, "--output", tmp_path, "--quiet", "--no-verify",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    artifacts = [tmp_path / f"{fmt}{row.suffix}" for fmt, row in FORMATS.items()]
    assert json.loads(result.stdout) == [manifest_of(artifact) for artifact in artifacts]
    assert not stale.exists() and not manifest_path(stale).exists() and live.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [live.name, *(path.name for artifact in artifacts
                      for path in (artifact, manifest_path(artifact), *companion_paths(artifact).values()))])


def test_verify_prints_one_line_for_every_format(artifacts, cli):
    """Toolchains' notices (coremltools' proxy-loading and version lines, torch's logging on importing ExecuTorch,
    XNNPACK's delegate) only with --verbose: what a CI log shows of a passing check is its verdict. Core ML and
    ExecuTorch in fresh processes, since their notices come on import (TFLite's fresh process is test_tflite's)."""
    fresh = ("coreml", "executorch")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(fresh, pool.map(lambda fmt: run_cli("verify", artifacts[fmt]), fresh)))
    results.update({fmt: cli("verify", artifact) for fmt, artifact in artifacts.items() if fmt not in fresh})
    for fmt, result in results.items():
        assert result.returncode == 0, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "PASS" in line, f"{fmt}: {result.stderr}"
        assert result.stdout == ""


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
def test_a_damaged_artifact_is_one_line_and_exit_2(fmt, damage, artifacts, cat_photo, tmp_path, cli):
    artifact = copy_artifact(artifacts[fmt], tmp_path)
    {**DAMAGES, **COREML_DAMAGES}[damage](artifact)
    # The manifest is made to agree with the damaged file, so that the runtime itself must refuse it.
    rewrite_manifest(artifact, lambda manifest: manifest.update(sha256=sha256(artifact)))
    for result in (cli("verify", artifact), cli("run", artifact, cat_photo)):
        assert_one_line_error(result, "cannot", code=2)
        assert "PASS" not in result.stdout + result.stderr


def test_run_refuses_an_artifact_that_changed_after_export(artifacts, cat_photo, tmp_path, cli):
    artifact = copy_artifact(artifacts["onnx"], tmp_path)
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert_one_line_error(cli("run", artifact, cat_photo), "sha256 differs", code=2)


def test_run_and_verify_name_the_key_a_manifest_lacks(artifacts, cat_photo, tmp_path, cli):
    artifact = copy_artifact(artifacts["tflite"], tmp_path)
    manifest = manifest_of(artifact)
    del manifest["preprocessing"]["mean"]
    manifest_path(artifact).write_text(json.dumps(manifest))
    for result in (cli("verify", artifact), cli("run", artifact, cat_photo)):
        assert_one_line_error(result, f"manifest {manifest_path(artifact)} (preprocessing) is missing the key 'mean'")


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


def test_an_image_whose_scale_cannot_be_told_is_refused(artifacts, tmp_path, cli):
    Image.fromarray(np.full((32, 32), 7e5, np.float32)).save(tmp_path / "radiance.tiff")
    (tmp_path / "empty.png").write_bytes(b"")
    for image, fragment in (("radiance.tiff", "neither in [0, 1]"), ("empty.png", "cannot read image")):
        assert_one_line_error(cli("run", artifacts["onnx"], tmp_path / image), fragment)


def test_a_16_bit_photo_gets_the_prediction_of_its_8_bit_twin(artifacts, photo_images, tmp_path, cli):
    Image.fromarray(photo_images["coffee"]).save(tmp_path / "coffee8.png")
    wide_png(tmp_path / "coffee16.png", photo_images["coffee"].astype(np.uint16) * 257)
    eight, sixteen = (cli("run", artifacts["onnx"], tmp_path / name) for name in ("coffee8.png", "coffee16.png"))
    assert eight.returncode == 0 and sixteen.returncode == 0, eight.stderr + sixteen.stderr
    assert eight.stdout and eight.stdout == sixteen.stdout


def test_an_extreme_option_is_refused_before_any_work(tmp_path, cli):
    """One CLI case (every bounded option is test_tables'): 100000 px would exhaust memory, were it attempted."""
    started = time.perf_counter()
    assert_one_line_error(cli("export", "--format", "onnx", "--resolution", "100000", "--output", tmp_path / "m.onnx"),
                          "--resolution must be from 32 to 1024")
    assert time.perf_counter() - started < 60
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_before_the_model_is_built(artifacts, tmp_path, cli):
    artifact = copy_artifact(artifacts["onnx"], tmp_path)
    before = sha256(artifact)
    # The checkpoint does not exist: had the model been built first, that would be the error.
    result = cli("export", "--format", "onnx", "--output", artifact, "--weights", "absent.safetensors")
    assert_one_line_error(result, f"{artifact} exists; pass --force")
    assert sha256(artifact) == before


@pytest.mark.parametrize("fmt", ["onnx", "coreml"])
def test_force_replaces_an_artifact_never_an_unrelated_directory(fmt, tmp_path, cli):
    output = tmp_path / f"photos{FORMATS[fmt].suffix}"
    output.mkdir()
    (output / "holiday.jpg").write_bytes(b"precious")
    assert_one_line_error(cli("export", "--format", fmt, "--resolution", 64, "--output", output, "--force"),
                          "not a", "artifact", "--force replaces only an artifact")
    assert (output / "holiday.jpg").read_bytes() == b"precious"


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs mounted for the test: an ONNX conv_small (15 MB) cannot fit."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        missing_system_part("mounting a small filesystem needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        missing_system_part(f"this machine does not allow mounting a tmpfs: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk, cli):
    result = cli("export", "--format", "onnx", "--resolution", 64, "--output", small_disk / "m.onnx", "--no-verify")
    assert_one_line_error(result, "cannot write", "m.onnx")
    assert list(small_disk.iterdir()) == []


def test_a_read_only_disk_is_one_line_before_any_work(small_disk, cli):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert_one_line_error(cli("export", "--format", "onnx", "--output", small_disk / "m.onnx"),
                          "cannot write to the folder", "Read-only file system")


# One signal in the default suite (each is a fresh export process); the others run in the matrix tier.
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.matrix),
                                    pytest.param(signal.SIGHUP, marks=pytest.mark.matrix)])
def test_a_signal_during_export_cleans_up_the_partial_file(signum, tmp_path):
    """A fresh process, since the signal is the point (SIGHUP: a closed terminal, a dropped ssh session)."""
    output = tmp_path / "m.onnx"
    process = subprocess.Popen([sys.executable, "-m", "mnv4", "export", "--format", "onnx", "--resolution", "64",
                                "--output", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


def test_an_internal_error_is_one_line_with_exit_3_and_debug_shows_the_traceback(monkeypatch, cli):
    """A bug planted in the model summary: what mnv4 does with an error that is not the user's."""
    import mnv4.model.profile

    def broken(*args, **kwargs):
        raise RuntimeError("summary table overflowed")

    monkeypatch.setattr(mnv4.model.profile, "summary", broken)
    assert_one_line_error(cli("info", "--variant", "conv_small"), "internal error", "summary table overflowed",
                          "--debug", code=3)
    debug = cli("info", "--variant", "conv_small", "--debug")
    assert debug.returncode == 3 and "Traceback" in debug.stderr and "summary table overflowed" in debug.stderr


def test_usage_errors_are_one_line_and_exit_2(cli):
    assert_one_line_error(cli("export", "--no-such-option"), "No such option", "mnv4 export --help")
    assert_one_line_error(cli("info"), "Missing option")
