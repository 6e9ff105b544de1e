"""The browser runtimes: ONNX Runtime Web (wasm, webgpu, webgl) and LiteRT.js (wasm, webgpu) in headless Chromium,
driven through mnv4's page (mnv4/web), against the Python runtimes on the stored parity inputs; the page's
preprocessing and top-5 against `mnv4 run`; refusals in one line; no browser process outliving its runner. Device tier
(`-m devices`): needs Chromium, Node.js and mnv4/web's npm packages (scripts/install_system.sh)."""
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_artifact, missing_system_part

from mnv4.artifact.manifest import read_manifest
from mnv4.artifact.parity import compare
from mnv4.artifact.reference import read_reference
from mnv4.data import load_image
from mnv4.errors import DamagedArtifactError, MissingSystemPartError, MNV4Error
from mnv4.runtimes import load
from mnv4.runtimes.browser import (
    CHROMIUM_FLAGS,
    NODE_MODULES,
    BrowserRunner,
    Driver,
    chromium_path,
    live_processes,
    serve,
)

pytestmark = pytest.mark.devices


@pytest.fixture(scope="module", autouse=True)
def browser_parts():
    """Chromium, Node.js and mnv4/web's npm packages are installed here."""
    try:
        chromium_path()
    except MissingSystemPartError as error:
        missing_system_part(str(error))
    if not shutil.which("node") or not (NODE_MODULES / "playwright-core").is_dir():
        missing_system_part("Node.js or mnv4/web's npm packages are not installed (scripts/install_system.sh)")


def inputs_of(artifact: Path) -> np.ndarray:
    return read_reference(artifact, read_manifest(artifact)).inputs


def against_python(label: str, artifact: Path, runner: BrowserRunner, count: int | None = None):
    """The browser's logits on the stored inputs against the format's own Python runtime's: their Parity."""
    inputs = inputs_of(artifact)[:count]
    expected, actual = load(artifact)(inputs), runner(inputs)
    parity = compare(expected, actual)
    print(f"\n{label} vs the Python runtime on {len(inputs)} inputs: rel err {parity.rel_err:.2e}, "
          f"min cosine {parity.cosine:.6f}, top-1 {parity.top1_agreement:.0%}; {runner.execution()}")
    assert actual.shape == expected.shape and actual.dtype == np.float32
    return parity


@pytest.fixture(scope="module")
def onnx_fp32(store) -> Path:
    return store.get("onnx", dynamic_batch=True)


@pytest.fixture(scope="module")
def tflite_fp32(store) -> Path:
    return store.get("tflite")


@pytest.fixture(scope="module")
def onnx_int8(store) -> Path:
    return store.get("onnx", fixture=True, precision="int8", dynamic_batch=True)


@pytest.fixture(scope="module")
def astronaut() -> Path:
    from skimage import data

    return Path(data.__file__).parent / "astronaut.png"


def test_ort_web_wasm_matches_onnxruntime_on_two_threads(onnx_fp32):
    with BrowserRunner(onnx_fp32, threads=2, backend="wasm") as runner:
        parity = against_python("ort-web-wasm", onnx_fp32, runner)
        execution = runner.execution()
    assert parity.rel_err < 1e-5 and parity.top1_agreement == 1
    assert runner.runtime == "ort-web-wasm" and execution["library"] == "onnxruntime-web 1.31.1"
    assert execution["threads"] == 2  # cross-origin isolated: the page's WebAssembly has threads
    assert re.fullmatch(r"Chromium \d+\.[\d.]+", execution["browser"])


def test_ort_web_webgpu_matches_onnxruntime(onnx_fp32):
    with BrowserRunner(onnx_fp32, backend="webgpu") as runner:
        parity = against_python("ort-web-webgpu", onnx_fp32, runner, count=4)
        assert "swiftshader" in runner.execution()["adapter"]
    assert parity.rel_err < 1e-4 and parity.top1_agreement == 1


def test_ort_web_webgpu_computes_int8_wrong_where_wasm_is_right(onnx_int8):
    """The known upstream bug (onnxruntime-web 1.31.1): its WebGPU backend gets a QDQ int8 model wrong. Run as it is,
    so that the parity gate sees it; when this fails, upstream fixed it."""
    with BrowserRunner(onnx_int8, backend="wasm") as runner:
        wasm = against_python("ort-web-wasm int8", onnx_int8, runner)
    with BrowserRunner(onnx_int8, backend="webgpu") as runner:
        webgpu = against_python("ort-web-webgpu int8", onnx_int8, runner)
    assert wasm.cosine >= 0.99 and wasm.top1_agreement == 1
    assert webgpu.cosine < 0.9


def test_ort_web_webgl_failure_is_the_runtime_s_own_one_line(onnx_fp32):
    """WebGL takes no dynamic batch axis (it checks the input against a symbolic dimension it reads as undefined):
    the runtime's error, in one line, naming the runtime and the file."""
    with BrowserRunner(onnx_fp32, backend="webgl") as runner:
        assert runner.execution()["adapter"]  # ANGLE on SwiftShader: WebGL itself works
        with pytest.raises(DamagedArtifactError) as error:
            runner(inputs_of(onnx_fp32)[:1])
    message = str(error.value)
    print(f"\n{message}")
    assert message.startswith("ort-web-webgl cannot run onnx.onnx: ") and "\n" not in message


def test_litert_js_matches_litert_on_wasm_and_webgpu(tflite_fp32):
    for backend in ("wasm", "webgpu"):
        with BrowserRunner(tflite_fp32, backend=backend) as runner:
            parity = against_python(f"litert-js-{backend}", tflite_fp32, runner)
            execution = runner.execution()
        assert parity.rel_err < 1e-4 and parity.top1_agreement == 1
        assert execution["library"] == "@litertjs/core 2.5.3" and execution["fully_accelerated"] is True


def test_litert_js_refuses_integer_input_and_a_dynamic_batch_in_one_line(store):
    for options, expected in (({"fixture": True, "precision": "int8", "int8_io": True}, "cannot feed an int8 input"),
                              ({"precision": "fp16", "nhwc": True, "dynamic_batch": True, "cli": True},
                               "cannot run an input of shape [-1,64,64,3]")):
        artifact = store.get("tflite", **options)
        with pytest.raises(DamagedArtifactError) as error:
            BrowserRunner(artifact, backend="wasm")
        message = str(error.value)
        assert message.startswith("litert-js-wasm cannot load tflite.tflite: LiteRT.js ") and expected in message
        assert "\n" not in message


def test_a_backend_the_library_lacks_is_refused_before_any_browser(tflite_fp32):
    with pytest.raises(MNV4Error, match=r"unknown @litertjs/core backend 'webgl'.*choose one of: wasm, webgpu"):
        BrowserRunner(tflite_fp32, backend="webgl")


def test_without_chromium_the_runner_is_a_missing_system_part(tflite_fp32, monkeypatch):
    monkeypatch.setenv("MNV4_CHROMIUM", "/nonexistent")
    with pytest.raises(MissingSystemPartError) as error:
        load(tflite_fp32, runner=BrowserRunner, backend="wasm")
    assert str(error.value) == ("Chromium (MNV4_CHROMIUM=/nonexistent) is not installed here: "
                                "bash scripts/install_system.sh")


def test_no_browser_process_outlives_its_runner(tflite_fp32):
    """Closed, or collected without being closed: Node.js, Chromium and every process of theirs end with the
    runner, and its folder goes."""
    for end in ("close", "collect"):
        runner = BrowserRunner(tflite_fp32, backend="wasm")
        tag, folders = runner._driver.tag, (runner._workdir, runner._driver.folder)
        groups, tagged = live_processes(tag)
        started = [pid for pid, group in groups.items() if pid in tagged or group in tagged]
        assert len(started) >= 3  # Node.js, Chromium and its helpers
        if end == "close":
            runner.close()
        else:
            del runner
            gc.collect()
        assert not any(pid in live_processes(tag)[0] for pid in started), end
        assert not any(folder.exists() for folder in folders)


def run_lines(result) -> list[tuple[str, int, str]]:
    """`mnv4 run`'s top-5 lines as (name, index, percent)."""
    assert result.returncode == 0, result.stderr
    return [re.fullmatch(r"\d+\. (.*) \(index (\d+)\): ([\d.]+)%", line).groups()
            for line in result.stdout.strip().splitlines()]


def test_image_input_artifacts_run_in_the_browser_on_their_pixels(store, astronaut, cli, tmp_path):
    """An image-input ONNX and TFLite file (NHWC pixels 0 to 255, normalised inside) in ONNX Runtime Web and LiteRT.js:
    the runner feeds them the reference's pixels, and the page gives a photo's pixels without mean and std, so that
    it classifies as `mnv4 run` does."""
    artifacts = [store.get(fmt, image_input=True) for fmt in ("onnx", "tflite")]
    for artifact in artifacts:
        with BrowserRunner(artifact, backend="wasm") as runner:
            assert runner.image_input
            parity = against_python(f"{artifact.name} image input", artifact, runner)
        assert parity.rel_err < 1e-4 and parity.top1_agreement == 1
    printed = {artifact: run_lines(cli("run", artifact, astronaut)) for artifact in artifacts}
    (tmp_path / "io").mkdir()
    shutil.copyfile(astronaut, tmp_path / "io" / "astronaut.png")
    with serve(artifacts, io_dir=tmp_path / "io") as url:
        driver = Driver(url, CHROMIUM_FLAGS, timeout=60)
        try:
            for artifact in artifacts:
                driver.call("load", artifact.name, "wasm", 1, timeout=120)
                top5 = driver.call("classify", "/io/astronaut.png", timeout=120)["top5"]
                assert [row["index"] for row in top5] == [int(index) for _, index, _ in printed[artifact]]
        finally:
            driver.end()


def test_the_page_preprocesses_and_classifies_as_mnv4_run(onnx_fp32, tflite_fp32, astronaut, cli, tmp_path):
    # First: `cli` captures (and drops) what the test printed before it.
    printed = {artifact: run_lines(cli("run", artifact, astronaut)) for artifact in (onnx_fp32, tflite_fp32)}
    (tmp_path / "io").mkdir()
    shutil.copyfile(astronaut, tmp_path / "io" / "astronaut.png")
    with serve([onnx_fp32, tflite_fp32], io_dir=tmp_path / "io") as url:
        driver = Driver(url, CHROMIUM_FLAGS, timeout=60)
        try:
            pixels = driver.call("preprocess", "/io/astronaut.png", timeout=60)
            classified = {}
            for artifact in (onnx_fp32, tflite_fp32):
                driver.call("load", artifact.name, "wasm", 1, timeout=120)
                classified[artifact] = driver.call("classify", "/io/astronaut.png", timeout=120)
        finally:
            driver.end()
    expected = read_manifest(onnx_fp32).preprocessing_spec()(load_image(astronaut))
    difference = np.abs(np.asarray(pixels["data"], np.float32).reshape(expected.shape) - expected)
    print(f"\nthe page's preprocessing of astronaut.png vs mnv4's: max abs diff {difference.max():.3g}")
    assert pixels["shape"] == [1, *expected.shape] and difference.max() == 0
    for artifact, page in classified.items():
        lines = printed[artifact]
        shown = [(row["label"], row["index"], f"{row['probability'] * 100:.2f}") for row in page["top5"]]
        print(f"{artifact.name}: page {shown[0]}, mnv4 run {lines[0]}")
        assert [index for _, index, _ in shown] == [int(index) for _, index, _ in lines]
        assert [label for label, _, _ in shown] == [name for name, _, _ in lines]
        assert all(abs(float(a) - float(b)) <= 0.02 for (_, _, a), (_, _, b) in zip(shown, lines))
        assert page["first_ms"] > 0 and len(page["ms"]) == 1


def test_mnv4_web_shows_the_astronauts_top5_as_mnv4_run_prints_it(onnx_fp32, astronaut, cli, tmp_path):
    """The command users open: `mnv4 web` serves the page; the astronaut chosen in its file input, as a user does, shows
    the top-5 (names and percentages) that `mnv4 run` prints."""
    printed = run_lines(cli("run", onnx_fp32, astronaut))
    server = subprocess.Popen([sys.executable, "-m", "mnv4", "web", str(onnx_fp32)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", server.stdout.readline()).group(1)
        driver = Driver(url, CHROMIUM_FLAGS, timeout=60)
        try:
            driver.upload("#file", astronaut, timeout=60)
            shown = driver.table("#top5", timeout=120)
        finally:
            driver.end()
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    print(f"\nmnv4 web shows {shown[0]}; mnv4 run printed {printed[0]}")
    assert [(rank, name, f"{percent}%") for rank, (name, _, percent) in enumerate(printed, start=1)] == \
        [(int(rank.rstrip(".")), name, percent) for rank, name, percent in shown]
    assert server.returncode == 130 and stderr.strip() == "error: interrupted by SIGINT", stderr


def test_verify_in_the_browser_fails_int8_on_webgpu_and_passes_it_on_wasm(store, tflite_fp32, cli):
    """The verdicts users get: ONNX Runtime Web's WebGPU computes the int8 file wrong (exit 1, the known upstream issue
    named), its WebAssembly computes it right; LiteRT.js passes the fp32 .tflite."""
    int8 = store.get("onnx", precision="int8")
    webgpu = cli("verify", int8, "--runtime", "ort-web-webgpu", "--json")
    assert webgpu.returncode == 1, webgpu.stderr
    parity = json.loads(webgpu.stdout)
    assert parity["passed"] is False and parity["runtime"] == "ort-web-webgpu" and parity["emulated"]
    assert "onnxruntime-web 1.31.1" in parity["known_issue"] and parity["known_issue"] in webgpu.stderr
    assert webgpu.stderr.strip().splitlines()[-1] == f"error: {int8.name} fails parity"
    for artifact, runtime in ((int8, "ort-web-wasm"), (tflite_fp32, "litert-js-wasm")):
        result = cli("verify", artifact, "--runtime", runtime, "--json")
        assert result.returncode == 0, result.stderr
        parity = json.loads(result.stdout)
        assert parity["passed"] and parity["runtime"] == runtime and "known_issue" not in parity
        assert parity["execution"]["browser"].startswith("Chromium") and "emulated here" in result.stderr


def test_the_bench_measures_the_gpu_and_browser_runtimes_as_emulated_rows(onnx_fp32, tflite_fp32, cli, tmp_path):
    artifacts = tmp_path / "artifacts"
    for artifact in (onnx_fp32, tflite_fp32):
        copy_artifact(artifact, artifacts)
    output = tmp_path / "out"
    result = cli("bench-artifacts", artifacts, "--runtimes", "cpu,litert-gpu,ort-web-wasm,litert-js-wasm",
                 "--min-seconds", "0.2", "--output-dir", output, "--strict")
    assert result.returncode == 0, result.stderr
    rows = {row["runtime"]: row for row in json.loads((output / "results.json").read_text())["rows"]}
    assert set(rows) == {"onnxruntime", "ort-web-wasm", "litert", "litert-gpu", "litert-js-wasm"}
    for name, row in rows.items():
        assert row["status"] == "ok" and row["parity"]["passed"], (name, row["reason"])
        assert row["emulated"] == (name not in ("onnxruntime", "litert")), name
        assert row["device"] == ("gpu" if name == "litert-gpu" else "cpu"), name  # WebAssembly runs on the CPU
        assert row["latency_ms"]["iterations"] == (3 if row["emulated"] else row["latency_ms"]["iterations"])
    assert rows["litert-gpu"]["parity"]["tolerance"] == "fp16-arithmetic" and rows["litert-gpu"]["peak_fraction"] is None
    report = (output / "report.md").read_text()
    assert "litert-gpu (emulated)" in report and "not representative of any device" in report
    headline = report.split("## How to read")[0]
    assert "| tflite | cpu | litert |" in headline and "| tflite | cpu | litert-gpu" not in headline


def test_serving_refuses_an_artifact_without_its_manifest(onnx_fp32, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copyfile(onnx_fp32, lone)
    with pytest.raises(MNV4Error, match="no manifest for .*lone.onnx"):
        with serve([lone]):
            pass


def test_the_server_serves_only_the_page_the_vendored_builds_and_the_artifacts(onnx_fp32):
    import urllib.error
    import urllib.request

    with serve([onnx_fp32]) as url:
        def status(path: str) -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(url + path) as response:
                    return response.status, dict(response.headers)
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers)

        page, headers = status("/")
        assert page == 200 and headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert status("/vendor/onnxruntime-web/dist/ort-wasm-simd-threaded.jsep.wasm")[1]["Content-Type"] == \
            "application/wasm"
        assert status("/artifacts/0/onnx.onnx")[0] == 200
        for outside in ("/vendor/onnxruntime-web/package.json", "/vendor/playwright-core/index.js",
                        "/vendor/onnxruntime-web/dist/%2e%2e/package.json", "/..%2fdriver.mjs", "/io/x",
                        f"/{os.path.relpath(onnx_fp32, '/')}"):
            assert status(outside)[0] == 404, outside
