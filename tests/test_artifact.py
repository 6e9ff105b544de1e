"""The artifact layer: the typed manifest and its validation, the exporters' typed facts, the torch-free import of
mnv4 and its runners, and the capture of toolchain output."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mnv4.artifact.facts import ArtifactFacts, Interface, Quantization
from mnv4.artifact.formats import FORMATS, get_format
from mnv4.artifact.manifest import SCHEMA, Manifest, manifest_path, read_manifest
from mnv4.artifact.parity import breaches, compare
from mnv4.artifact.precisions import FP16, LIMITS
from mnv4.errors import MNV4Error
from mnv4.runtimes import Runner, runner_class


def test_import_mnv4_and_its_onnx_and_litert_runners_load_no_torch():
    code = ("import sys, mnv4; mnv4.runtimes.load; import mnv4.runtimes.onnxruntime, mnv4.runtimes.litert; "
            "print(sorted(m for m in ('torch', 'mnv4.export', 'mnv4.model', 'mnv4.bench') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_model_api_resolves_on_first_use():
    import mnv4

    assert mnv4.create_model("conv_small").num_classes == 1000
    assert "create_model" in dir(mnv4)
    with pytest.raises(AttributeError):
        mnv4.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_has_an_exporter_and_a_runner(name, tmp_path):
    row = FORMATS[name]
    assert callable(importlib.import_module(f"mnv4.export.{row.exporter}").export)
    assert issubclass(runner_class(tmp_path / f"model{row.suffix}"), Runner)
    assert get_format(name) is row


def test_unknown_formats_and_files_are_refused():
    with pytest.raises(MNV4Error, match="unknown format 'pdf'"):
        get_format("pdf")
    with pytest.raises(MNV4Error, match="no runtime for model.bin"):
        runner_class("model.bin")


@pytest.mark.parametrize("limits", list(LIMITS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_never_pass(limits, bad):
    reference = np.random.default_rng(0).standard_normal((4, 10))
    candidate = reference.copy()
    candidate[1, 3] = bad
    failures = breaches(compare(reference, candidate), LIMITS[limits])
    assert failures and "not finite" in failures[0]


def example_manifest() -> Manifest:
    return Manifest(format="onnx", artifact="m.onnx", sha256="0" * 64, bytes=10, variant="conv_small",
                    resolution=224, batch="dynamic", precision="fp16", num_classes=1000,
                    preprocessing={"crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3},
                    weights={"kind": "seeded-calibrated", "seed": 0}, versions={"mnv4": "0.1.0"}, export_seconds=1.5,
                    facts={"input_name": "pixels", "compute_dtype": "float32"}, parity={"passed": True})


def test_manifest_round_trip_is_flat_and_typed(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    manifest = example_manifest()
    manifest.write(tmp_path / "m.onnx")
    document = json.loads(manifest_path(tmp_path / "m.onnx").read_text())
    assert document["schema"] == SCHEMA and document["input_name"] == "pixels"
    assert list(document)[-2:] == ["parity", "integrity"]
    again = read_manifest(tmp_path / "m.onnx")
    assert again == manifest
    assert again.dynamic_batch and again.verify_batches == (1, 4) and again.limits is FP16.limits
    assert again.preprocessing_spec().resolution == 224


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("variant"), "missing the key 'variant'"),
    (lambda d: d["preprocessing"].pop("std"), r"\(preprocessing\) is missing the key 'std'"),
    (lambda d: d.update(batch=0), "bad value for 'batch'"),
    (lambda d: d.update(format="pdf"), "bad value for 'format'"),
    (lambda d: d.update(schema=99), "schema 99; this mnv4 reads schemas 1 and 2"),
])
def test_a_damaged_manifest_names_the_file_and_the_key(change, message, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    document = example_manifest().as_dict()
    change(document)
    manifest_path(tmp_path / "m.onnx").write_text(json.dumps(document))
    with pytest.raises(MNV4Error, match=message) as raised:
        read_manifest(tmp_path / "m.onnx")
    assert str(manifest_path(tmp_path / "m.onnx")) in str(raised.value)


def test_a_manifest_that_is_not_json_or_not_there_is_refused(tmp_path):
    for name in ("m.onnx", "other.onnx", "m.tflite"):
        (tmp_path / name).write_bytes(b"model")
    manifest_path(tmp_path / "m.onnx").write_text("{")
    with pytest.raises(MNV4Error, match="not valid JSON"):
        read_manifest(tmp_path / "m.onnx")
    with pytest.raises(MNV4Error, match="no manifest"):
        read_manifest(tmp_path / "other.onnx")
    with pytest.raises(MNV4Error, match="artifact not found"):
        read_manifest(tmp_path / "absent.onnx")
    example_manifest().write(tmp_path / "m.tflite")  # an ONNX manifest beside a .tflite
    with pytest.raises(MNV4Error, match="is for format onnx"):
        read_manifest(tmp_path / "m.tflite")


def chatter():
    """What toolchains do: C++ code writes to the descriptors, Python code to sys.stdout and sys.stderr."""
    os.write(1, b"I0000 absl INFO line\n")
    os.write(2, b"oneDNN custom operations are on\n")
    print("python progress")
    print("a warning", file=sys.stderr)


def run_captured(error=None, enabled=True):
    """Run `chatter` under `captured` in a child process (the descriptors are the child's own)."""
    raise_line = f"raise {error}" if error else "pass"
    code = ("import sys\nfrom mnv4.chatter import captured\nfrom tests.test_artifact import chatter\n"
            "from mnv4.errors import MNV4Error\n"
            f"with captured({enabled}):\n    chatter()\n    {raise_line}\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(__file__)))


def test_toolchain_output_is_captured_on_success():
    result = run_captured()
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_toolchain_output_is_shown_when_the_step_fails():
    result = run_captured("RuntimeError('converter broke')")
    assert result.stdout == ""
    for line in ("absl INFO line", "oneDNN", "python progress", "a warning", "converter broke"):
        assert line in result.stderr


def test_bad_input_shows_no_toolchain_output():
    result = run_captured("MNV4Error('bad option')")
    assert "absl" not in result.stderr and "python progress" not in result.stderr
    assert "bad option" in result.stderr


def test_verbose_passes_toolchain_output_through():
    result = run_captured(enabled=False)
    assert "absl INFO line" in result.stdout and "python progress" in result.stdout
    assert "oneDNN" in result.stderr and "a warning" in result.stderr


def test_the_manifest_takes_the_facts_flat_with_one_quantization_schema():
    """Whatever the format, an exporter's facts become the same manifest keys: the interface, the dtypes, then
    `quantization` with the same keys in every format (what only one format says goes under its `details`)."""
    quantization = Quantization("a recipe", "tool 1.0", "int8 per channel", None, {"images": 8, "method": "min/max"},
                                {"Conv": 3, "Add": 1}, {"Softmax": 1}, "a rule", {"reduce_range": False})
    facts = ArtifactFacts(Interface("pixels", "NCHW", [1, 3, 64, 64], "float32", None, "float32"), "int8", "int8",
                          {"onnx": "1.0"}, quantization, details={"opset": 18})
    fields = facts.manifest_fields()
    assert fields["input_kind"] == "tensor" and "output_name" not in fields and fields["opset"] == 18
    assert list(fields["quantization"]) == ["recipe", "tool", "weights", "activations", "calibration",
                                            "quantized_op_types", "float_ops", "float_ops_rule", "details",
                                            "quantized_ops"]
    assert fields["quantization"]["quantized_ops"] == 4 and fields["quantization"]["calibration"]["images"] == 8
    assert "toolchain" not in fields  # the versions go to the manifest's `versions`
