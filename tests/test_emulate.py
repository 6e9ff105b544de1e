"""`mnv4 emulate arm64`: ONNX and TFLite artifacts verified and measured on the ARM kernels of their runtimes in an
emulated arm64 root. The end-to-end test builds (or reuses, from $MNV4_CACHE/emulate) that root and needs root,
qemu-user-static, debootstrap and binfmt-support: it runs in the device tier, `-m devices`. The refusals run in the
default suite."""
import json
import os
import shutil

import pytest
from conftest import assert_one_line_error, copy_artifact, missing_system_part, rewrite_manifest, run_cli

from mnv4.emulation.arm64 import INSTALL_HINT

# What the end-to-end test emulates: seeded conv_small at 64 px, as (format, precision) -> the store's keywords.
EMULATED = {("tflite", "fp32"): {}, ("tflite", "fp16"): {"nhwc": True, "dynamic_batch": True, "cli": True},
            ("tflite", "int8"): {}, ("onnx", "fp32"): {"dynamic_batch": True}, ("onnx", "int8"): {}}


@pytest.fixture(scope="module")
def onnx_artifact(store):
    return store.get("onnx", dynamic_batch=True)


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_refuses_an_unknown_architecture_and_a_missing_or_unmanifested_artifact(cli, tmp_path):
    assert_one_line_error(cli("emulate", "riscv64", tmp_path), "unknown architecture 'riscv64'", "arm64")
    assert_one_line_error(cli("emulate", "arm64"), "no artifacts given")
    stray = tmp_path / "stray.tflite"
    stray.write_bytes(b"TFL3")
    assert_one_line_error(cli("emulate", "arm64", stray), "no manifest for", "stray.tflite")
    assert_one_line_error(cli("emulate", "arm64", tmp_path / "empty"), "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("emulate", "arm64", tmp_path / "empty"), "holds no ONNX or TFLite artifact")


def test_refuses_a_user_other_than_root_before_any_work(cli, monkeypatch, onnx_artifact, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    output = tmp_path / "out"
    assert_one_line_error(cli("emulate", "arm64", onnx_artifact, "--output-dir", output, "--root", tmp_path / "cache"),
                          "must run as root")
    assert not output.exists() and not (tmp_path / "cache").exists()


def test_refuses_a_host_without_qemu_or_debootstrap_naming_what_to_install(cli, monkeypatch, as_root, onnx_artifact,
                                                                            tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", str(tools))
    assert INSTALL_HINT == "apt-get install -y qemu-user-static debootstrap binfmt-support"
    assert_one_line_error(cli("emulate", "arm64", onnx_artifact),
                          f"qemu-aarch64-static is not installed (qemu-user-static): {INSTALL_HINT}")
    # A host with qemu but no debootstrap: refused before qemu is ever run, so a stand-in executable is qemu enough.
    qemu = tools / "qemu-aarch64-static"
    qemu.write_text("#!/bin/sh\nexit 1\n")
    qemu.chmod(0o755)
    assert_one_line_error(cli("emulate", "arm64", onnx_artifact), "debootstrap is not installed (debootstrap)")


def test_refuses_a_cpu_without_a_shipped_cpuinfo(cli, as_root, onnx_artifact):
    assert_one_line_error(cli("emulate", "arm64", onnx_artifact, "--cpu", "cortex-a53"),
                          "no /proc/cpuinfo for CPU 'cortex-a53'", "choose cortex-a76")


def test_refuses_a_format_whose_arm_runtime_needs_torch(cli, onnx_artifact, tmp_path):
    """An ExecuTorch artifact (here an ONNX file's manifest and reference relabelled, which is all the refusal reads)."""
    program = copy_artifact(onnx_artifact, tmp_path, name="conv_small.pte")
    rewrite_manifest(program, lambda manifest: manifest.update(format="executorch"))
    assert_one_line_error(cli("emulate", "arm64", program), "executorch artifacts cannot run emulated",
                          "only onnx, tflite")


def test_refuses_artifacts_of_two_models_before_any_work(cli, onnx_artifact, store, tmp_path):
    """Checked as `mnv4 bench-artifacts` checks them: one results file, one model."""
    fixture = copy_artifact(store.get("onnx", fixture=True, precision="int8", dynamic_batch=True), tmp_path / "int8")
    assert_one_line_error(cli("emulate", "arm64", onnx_artifact, copy_artifact(fixture, tmp_path, name="fixture_int8.onnx")),
                          "are of 2 models")


def emulation_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mnv4 emulate runs as root"
    missing = [tool for tool in ("qemu-aarch64-static", "debootstrap", "update-binfmts") if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


@pytest.mark.devices
def test_arm_kernels_pass_every_artifact_with_xnnpack_and_float16_arithmetic(store, tmp_path):
    """conv_small as TFLite fp32, fp16 and int8 and ONNX fp32 and int8, verified and benched in the emulated root:
    every verdict passes on the ARM kernels, XNNPACK ran every TFLite graph whole, and fp16 computed in float16."""
    unavailable = emulation_unavailable()
    if unavailable:
        missing_system_part(unavailable)
    artifacts = tmp_path / "artifacts"  # one folder, each stored artifact under a name of its own
    for (fmt, precision), options in EMULATED.items():
        stored = store.get(fmt, precision=precision, **options)
        copy_artifact(stored, artifacts, name=f"conv_small_{precision}{stored.suffix}")
    output = tmp_path / "out"
    result = run_cli("emulate", "arm64", artifacts, "--output-dir", output, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\nPASS ") == len(EMULATED), result.stderr

    verdicts = {os.path.basename(run["artifact"]): run for run in json.loads((output / "verify.json").read_text())}
    assert len(verdicts) == len(EMULATED)
    for name, run in verdicts.items():
        parity = run["parity"]
        assert run["exit_code"] == 0 and parity["passed"], (name, parity.get("failures"))
        if name.endswith(".tflite"):
            assert parity["execution"]["fully_delegated"], name
            assert parity["execution"]["xnnpack_fp16"] == ("_fp16" in name), name
        else:
            assert parity["execution"]["execution_providers"][0] == "CPUExecutionProvider", name
    assert verdicts["conv_small_fp16.tflite"]["parity"]["tolerance"] == "fp16-arithmetic"

    results = json.loads((output / "results.json").read_text())
    machine = results["machine"]
    assert machine["id"] == "emulated-arm64" and machine["emulated"] and machine["qemu_cpu"] == "cortex-a76"
    assert "aarch64" in machine["platform"]
    assert "not representative" in machine["note"]
    assert {row["status"] for row in results["rows"]} == {"ok"} and len(results["rows"]) == len(EMULATED)
    assert all(row["parity"]["passed"] for row in results["rows"])
    assert "not representative" in (output / "report.md").read_text()
