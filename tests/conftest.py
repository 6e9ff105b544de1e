"""What the tests share.

- `store`: every artifact the suite looks at, exported once through `mnv4.export.export` with verification on (so
  its manifest and stored reference exist) and kept on disk under `$MNV4_CACHE/test-artifacts/<key>`, the key a hash
  of mnv4's sources and the toolchains' versions: a second run with the same code exports nothing. Tests never change
  a stored artifact; they copy it (`copy_artifact`) to damage it. Concurrent workers (pytest -n 2) build each one
  once, under a lock.
- `cli`: `mnv4 ARGS...` run in this process (`main()`), its exit code and captured stdout and stderr. A fresh process
  (`run_cli`) only where that is the point: signals, the torch-free install, stdout purity, import isolation.
- `seeded(variant)`: the export pipeline's reproducible offline weights, the parity inputs and PyTorch's logits, for
  tests that call an exporter or a runner directly.
Artifacts are at 64 px wherever resolution is not what is under test.

The catalogue: ask the store for one of these (the same keywords make the same artifact) before adding another, and
add one only for a capability none of them has. Seeded conv_small unless said otherwise; "fixture" is the trained
digits fixture (fixture=True), whose verification includes its held-out accuracy.
    onnx        dynamic_batch=True | variant="hybrid_medium", dynamic_batch=True | opset=18 |
                precision="int8" (device tier)
                fixture, precision="fp16", batch=2 | fixture, precision="int8", dynamic_batch=True
    tflite      (fp32) | precision="fp16", nhwc=True, dynamic_batch=True, cli=True | variant="hybrid_medium",
                dynamic_batch=True (matrix tier) | fixture, precision="int8" | fixture, precision="int8", int8_io=True |
                fixture, precision="int8-weights" | fixture | runtime=["litert-gpu"] (device tier)
    executorch  (fp32) | precision="fp16", nhwc=True, dynamic_batch=True | fixture, precision="int8", batch=4 |
                delegate="vulkan" | delegate="coreml"
    coreml      (fp32) | variant="hybrid_medium" | image_input=True | precision="fp16", dynamic_batch=True,
                compute_units="cpu_and_ne", minimum_deployment_target="iOS16" | fixture, precision="int8",
                labels=DIGIT_NAMES | fixture, precision="int8-weights"
    ort         (fp32) | fixture, precision="int8"
    openvino    (fp32) | fixture, precision="int8"
    ncnn        (fp32) | fixture, precision="fp16"
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

RESOLUTION = 64
TOOLCHAINS = ("torch", "executorch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "coremltools", "onnx",
              "onnxruntime", "onnxscript", "timm", "numpy")
MNV4 = Path(__file__).resolve().parents[1] / "mnv4"
DIGIT_NAMES = Path(__file__).with_name("digit_names.txt")  # a --labels file for the trained digits fixture


@dataclass
class Result:
    """What a command did: its exit code and what it wrote."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, env: dict | None = None, timeout: int = 600) -> Result:
    """`mnv4 ARGS...` in a fresh process."""
    return _run([sys.executable, "-m", "mnv4", *args], env, timeout)


def run_without_torch(*args) -> Result:
    """`mnv4 ARGS...` in a fresh process where PyTorch and the rest of the full install cannot be imported
    (tests/without_torch.py), as on a runtime-only install."""
    return _run([sys.executable, str(Path(__file__).with_name("without_torch.py")), *args], None, 300)


def _run(argv: list, env: dict | None, timeout: int) -> Result:
    done = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, timeout=timeout, env=env)
    return Result(done.returncode, done.stdout, done.stderr)


def missing_system_part(why: str):
    """Skip a test whose system part (root, a tool) this machine lacks; in CI (CI=true) fail instead, so that a
    green run never hides a test that did not run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: a missing system part fails the run)")
    pytest.skip(f"{why}: bash scripts/install_system.sh installs it")


@pytest.fixture(scope="session")
def vulkan():
    """Mesa's software Vulkan device (lavapipe), which LiteRT's GPU accelerator and ncnn's Vulkan path run on."""
    from mnv4.runtimes.base import vulkan_drivers

    if "lvp_icd" not in {name.split(".")[0] for name in vulkan_drivers()}:
        missing_system_part("Mesa's software Vulkan driver (lavapipe, mesa-vulkan-drivers >= 24) is not installed")


def assert_one_line_error(result: Result, *fragments: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def cli(capfd):
    """`mnv4 ARGS...` in this process: its Result. Python's sys.stdout and sys.stderr write through file descriptors 1
    and 2 meanwhile, as in a process of its own: under capfd they bypass the descriptors, so that what mnv4 captures
    there (Python-level notices: torch's logging on importing ExecuTorch, ExecuTorch's log of a file it cannot load)
    would otherwise reach the test's stderr, though no user ever sees it. The streams stay open afterwards: a logging
    handler made meanwhile may still hold one."""
    from mnv4.cli import main

    def run(*args) -> Result:
        capfd.readouterr()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, encoding="utf-8", closefd=False) for fd in (1, 2))
        try:
            code = main([str(arg) for arg in args])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved
        out, err = capfd.readouterr()
        return Result(code, out, err)

    return run


# ------------------------------------------------------------------------------------------------- the store

def sources_key() -> str:
    """What every stored artifact depends on besides its request: mnv4's code and the toolchains' versions."""
    digest = hashlib.sha256()
    for path in sorted(MNV4.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".txt"):
            digest.update(str(path.relative_to(MNV4)).encode() + path.read_bytes())
    for package in TOOLCHAINS:
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()[:16]


class Store:
    """Artifacts by request, each exported and verified once (see the module's docstring)."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, fmt: str, *, variant: str = "conv_small", resolution: int | None = RESOLUTION, fixture: bool = False,
            weights: Path | None = None, cli: bool = False, **options) -> Path:
        """The artifact of `mnv4 export --format FMT` with these options (ExportRequest's fields), seeded weights
        unless `fixture` (the trained digits fixture) or `weights`. With `cli` it is exported by a fresh `mnv4
        export --json` process, whose stdout and stderr are kept beside it (`exported_output`)."""
        from mnv4.artifact.files import exclusive
        from mnv4.artifact.formats import FORMATS
        from mnv4.export import ExportRequest

        if fixture:
            weights = trained(variant)
        # Keyed by the whole request, defaults filled in: two spellings of one export are one artifact.
        request = {"format": fmt, "cli": cli, **asdict(ExportRequest(variant, weights=weights, resolution=resolution,
                                                                     **options))}
        folder = self.root / hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]
        artifact = folder / f"{fmt}{FORMATS[fmt].suffix}"
        with exclusive(folder):
            if not (folder / "request.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)  # what a killed run left
                folder.mkdir(parents=True)
                (self._export_in_a_process if cli else self._export)(fmt, artifact, variant, resolution, weights,
                                                                     options)
                (folder / "request.json").write_text(json.dumps(request, default=str))
        return artifact

    @staticmethod
    def _export(fmt, artifact, variant, resolution, weights, options) -> None:
        from mnv4.export import ExportRequest, export

        export(fmt, ExportRequest(variant, weights=weights, resolution=resolution, **options), artifact)

    @staticmethod
    def _export_in_a_process(fmt, artifact, variant, resolution, weights, options) -> None:
        flags = [f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}") for name, value in options.items()]
        result = run_cli("export", "--format", fmt, "--variant", variant, "--resolution", resolution,
                         *(["--weights", weights] if weights else []), *flags, "--output", artifact, "--json")
        assert result.returncode == 0, result.stderr
        (artifact.parent / "export.stdout").write_text(result.stdout)
        (artifact.parent / "export.stderr").write_text(result.stderr)


def exported_output(artifact: Path) -> Result:
    """What the fresh `mnv4 export --json` process that made a `cli=True` artifact wrote."""
    folder = artifact.parent
    return Result(0, (folder / "export.stdout").read_text(), (folder / "export.stderr").read_text())


@pytest.fixture(scope="session")
def store() -> Store:
    from mnv4.cache import cache_root

    return Store(cache_root() / "test-artifacts" / sources_key())


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each computes on one thread (PyTorch's, and the OpenMP pools
    of the processes it starts), so that two workers do not oversubscribe them (training the fixture took ten times
    longer with two workers of two threads each on two cores)."""
    if hasattr(config, "workerinput") and int(config.workerinput.get("workercount", 1)) > 1:
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_sessionstart(session):
    """Stored artifacts of other sources or toolchains are of no more use: removed (by the controlling process)."""
    if hasattr(session.config, "workerinput"):
        return
    from mnv4.cache import cache_root

    current = sources_key()
    for stale in (cache_root() / "test-artifacts").glob("*"):
        if stale.name != current and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def flip_a_byte(path: Path) -> None:
    """Change one byte in the middle of `path`: the smallest alteration a file's recorded sha256 must catch."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_artifact(source: Path, folder: Path, reference: bool = True, name: str | None = None) -> Path:
    """A copy of a stored artifact with its manifest and companions (and its stored reference), to change without harm;
    under `name` where given (its manifest, companions and reference named after it)."""
    from mnv4.artifact.files import companion_paths
    from mnv4.artifact.manifest import manifest_path
    from mnv4.artifact.reference import reference_path

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or source.name)
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    beside = companion_paths(target)  # what its export wrote beside it (OpenVINO's weights); none for an impostor
    for kind, companion in companion_paths(source).items():
        if kind in beside:
            shutil.copyfile(companion, beside[kind])
    shutil.copyfile(manifest_path(source), manifest_path(target))
    if reference and reference_path(source).exists():
        shutil.copyfile(reference_path(source), reference_path(target))
    return target


def rewrite_manifest(artifact: Path, change, seal: bool = True) -> dict:
    """Apply `change` (a function of the manifest's document) and seal the result as an export would: for tests whose
    point is what comes after the manifest check (a runtime's own refusal, a verdict on another reference). Without
    `seal`, the integrity record stays as it was, as after an edit by hand."""
    from mnv4.artifact.manifest import manifest_path, sealed

    document = read_json(manifest_path(artifact))
    change(document)
    if seal:
        document = sealed({key: value for key, value in document.items() if key != "integrity"})
    manifest_path(artifact).write_text(json.dumps(document))
    return document


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def manifest_of(artifact: Path) -> dict:
    from mnv4.artifact.manifest import manifest_path

    return read_json(manifest_path(artifact))


# ------------------------------------------------------------------------------------------ models and photos

@cache
def trained(variant: str = "conv_small") -> Path:
    """The trained digits fixture (cached across runs by mnv4 itself)."""
    from mnv4.model.task import trained_fixture

    return trained_fixture(variant)


class Seeded:
    """A variant with the export pipeline's reproducible offline weights at `resolution`, the parity inputs `mnv4
    export` verifies with (nine photos and two random-pixel images, NCHW float32) and PyTorch's logits on them."""

    def __init__(self, variant: str, resolution: int = RESOLUTION):
        import torch

        from mnv4.artifact.parity import verification_inputs
        from mnv4.verification.reference import reference_model

        self.variant = variant
        self.model, self.preprocessing, _ = reference_model(variant, None, resolution)
        self.resolution = self.preprocessing.resolution
        self.inputs = verification_inputs(self.preprocessing)
        with torch.no_grad():
            self.logits = self.model(torch.from_numpy(self.inputs)).numpy()
            self.logits64 = self.model.double()(torch.from_numpy(self.inputs).double()).numpy()
            self.model.float()

    def example(self, batch: int):
        import torch

        return torch.from_numpy(self.inputs[:batch])


seeded = cache(Seeded)


class Trained:
    """The trained fixture at its 64 px: model, digits splits, PyTorch float32's held-out logits and top-1."""

    def __init__(self, variant: str):
        from mnv4.artifact.parity import top1
        from mnv4.model.task import digits, predict
        from mnv4.verification.reference import reference_model

        self.variant = variant
        self.model, self.preprocessing, _ = reference_model(variant, trained(variant), RESOLUTION)
        self.training, self.held_out = digits(self.preprocessing)
        self.logits = predict(self.model, self.held_out.images)
        self.top1 = top1(self.logits, self.held_out.labels)

    def accuracy(self, runner) -> float:
        from mnv4.artifact.parity import top1
        from mnv4.model.task import predict

        return top1(predict(runner, self.held_out.images), self.held_out.labels)

    def check_accuracy(self, label: str, runner) -> float:
        """The runner's held-out top-1, which may lose at most the default bound against PyTorch float32's."""
        from mnv4.artifact.parity import MAX_TOP1_LOSS_POINTS

        accuracy = self.accuracy(runner)
        print(f"\n{label}: held-out top-1 {accuracy:.2%} (PyTorch float32 {self.top1:.2%})")
        assert (self.top1 - accuracy) * 100 <= MAX_TOP1_LOSS_POINTS
        return accuracy


trained_model = cache(Trained)


@pytest.fixture(scope="session")
def photo_images():
    from mnv4.data import photos

    return photos()


@pytest.fixture(scope="session")
def cat_photo(tmp_path_factory, photo_images) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(photo_images["chelsea"]).save(path)
    return path


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


def frames(manifest) -> np.ndarray:
    """The photos as an app has them after its resize and crop to the artifact's resolution: uint8 RGB, NHWC. Made by
    the eval transform with mean 0 and std 1/255, a path of its own beside the normalised inputs of the reference."""
    from mnv4.data import Preprocessing, photos

    spec = manifest.preprocessing
    as_pixels = Preprocessing(manifest.resolution, spec["crop_pct"], spec["interpolation"], (0.0,) * 3, (1 / 255,) * 3)
    return np.ascontiguousarray([np.round(as_pixels(image)).astype(np.uint8).transpose(1, 2, 0)
                                 for image in photos().values()])


def check_parity(label: str, reference: Seeded, actual: np.ndarray, limits, count: int | None = None) -> None:
    """`actual`, the logits of the first `count` of the reference's inputs (default all), within `limits` (a Limits
    row) by mnv4's own rule: against the float64 truth, allowing for PyTorch float32's own error on each input. The
    numbers against PyTorch float32 are printed (-s shows them)."""
    from mnv4.artifact.parity import RANDOM_INPUTS, compare, truth_breaches

    count = count or len(reference.inputs)
    expected, truth = reference.logits[:count], reference.logits64[:count]
    parity = compare(expected, actual)
    print(f"\n{label}: relative error {parity.rel_err:.2e}, min cosine {parity.cosine:.6f}, "
          f"top-1 agreement {parity.top1_agreement:.0%}")
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert truth_breaches(truth, expected, actual, limits, len(reference.inputs) - RANDOM_INPUTS) == []


def randomise_weights(model, calibration, seed: int = 0):
    """Give a model non-trivial weights: random BatchNorm affine parameters, running statistics measured
    on real photos and then perturbed at random, and random layer-scale values, so that activations and
    logits have a realistic scale and every parameter affects the output."""
    import torch

    from mnv4.model.weights import calibrate_batch_norm

    generator = torch.Generator().manual_seed(seed)

    def uniform(t, low, high):
        return torch.rand(t.shape, generator=generator) * (high - low) + low

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(uniform(norm.weight, 0.75, 1.25))
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.2)
        for name, parameter in model.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(uniform(parameter, 0.1, 0.6))
        calibrate_batch_norm(model, norms, calibration)
        for norm in norms:
            norm.running_var.mul_(uniform(norm.running_var, 0.75, 1.25))
            norm.running_mean.add_(torch.randn(norm.running_mean.shape, generator=generator)
                                   * 0.1 * norm.running_var.sqrt())
    return model


def altered_onnx(path: Path, factor: float = 1.001) -> None:
    """The ONNX file's largest weight tensor scaled by `factor`, in place."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * np.float32(factor), largest.name))
    onnx.save(model, str(path))


def altered_tflite(path: Path, factor: float = 1.001) -> None:
    """The TFLite file's largest (float32) weight buffer scaled by `factor`, in place."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    largest = max((buffer for buffer in model.buffers if buffer.data is not None), key=lambda b: len(b.data))
    weights = np.frombuffer(bytes(largest.data), np.float32) * np.float32(factor)
    largest.data = np.frombuffer(weights.tobytes(), np.uint8)
    builder = flatbuffers.Builder(path.stat().st_size + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


ONNXRUNTIME_OLDEST = Path(os.environ.get("MNV4_ONNXRUNTIME_OLDEST", "/opt/mnv4-onnxruntime-1.17")) / "bin" / "python"


def parity_in_oldest_onnxruntime(artifact: Path, tmp_path: Path) -> dict:
    """The parity record of an ONNX or ORT artifact run in onnxruntime 1.17 (the README's oldest; its venv is made by
    scripts/install_system.sh) against its stored reference, the fixture's accuracy included."""
    from mnv4.artifact.manifest import read_manifest
    from mnv4.artifact.parity import row_parity
    from mnv4.artifact.reference import read_reference

    if not ONNXRUNTIME_OLDEST.exists():
        missing_system_part(f"onnxruntime 1.17's venv ({ONNXRUNTIME_OLDEST}) is not installed")
    manifest = read_manifest(artifact)
    reference = read_reference(artifact, manifest)

    def logits_of(images: np.ndarray) -> np.ndarray:
        np.save(tmp_path / "inputs.npy", images)
        result = subprocess.run([ONNXRUNTIME_OLDEST, Path(__file__).with_name("in_onnxruntime.py"), artifact,
                                 tmp_path / "inputs.npy", tmp_path / "logits.npy"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.strip() == "1.17.3", result.stderr
        return np.load(tmp_path / "logits.npy")

    task = logits_of(reference.task.images) if reference.task is not None else None
    return row_parity(reference, logits_of(reference.inputs), manifest.limits, task)


def check_int8_manifest(manifest: dict, calibration_images: int = 64) -> dict:
    """What every int8 manifest says, in the one quantization schema of every format; returns its quantization."""
    assert manifest["weights_dtype"] == "int8" and manifest["compute_dtype"] == "int8"
    quantization = manifest["quantization"]
    assert {"recipe", "tool", "weights", "activations", "calibration", "quantized_ops", "quantized_op_types",
            "float_ops", "float_ops_rule", "details"} <= set(quantization)
    assert quantization["calibration"]["images"] == calibration_images == manifest["calibration"]["count"]
    assert quantization["quantized_ops"] == sum(quantization["quantized_op_types"].values()) > 0
    assert manifest["parity"]["passed"] is True and manifest["parity"]["task"]["passed"] is True
    return quantization
