"""`mnv4 emulate arm64`: ONNX and TFLite artifacts verified and measured on the ARM kernels of their runtimes in an
emulated arm64 root. The end-to-end test builds (or reuses, from $MNV4_CACHE/emulate) that root and needs root,
qemu-user-static, debootstrap and binfmt-support: it runs with `-m emulate`. The refusals run in the default suite."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnv4.cli import main
from mnv4.export import ExportRequest, export

RESOLUTION = 64
EMULATED = [("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8")]
SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}


def export_to(folder, fmt, precision):
    output = folder / f"conv_small_{precision}{SUFFIXES[fmt]}"
    export(fmt, ExportRequest(variant="conv_small", resolution=RESOLUTION, precision=precision), output)
    return output


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    return export_to(tmp_path_factory.mktemp("onnx"), "onnx", "fp32")


def one_line_error(capsys, argv, *fragments):
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_refuses_an_unknown_architecture_and_a_missing_or_unmanifested_artifact(capsys, tmp_path):
    one_line_error(capsys, ["emulate", "riscv64", str(tmp_path)], "unknown architecture 'riscv64'", "arm64")
    one_line_error(capsys, ["emulate", "arm64"], "no artifacts given")
    stray = tmp_path / "stray.tflite"
    stray.write_bytes(b"TFL3")
    one_line_error(capsys, ["emulate", "arm64", str(stray)], "no manifest for", "stray.tflite")
    one_line_error(capsys, ["emulate", "arm64", str(tmp_path / "empty")], "not found")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["emulate", "arm64", str(tmp_path / "empty")], "holds no ONNX or TFLite artifact")


def test_refuses_a_user_other_than_root_before_any_work(capsys, monkeypatch, onnx_artifact, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    output = tmp_path / "out"
    one_line_error(capsys, ["emulate", "arm64", str(onnx_artifact), "--output-dir", str(output),
                            "--root", str(tmp_path / "cache")], "must run as root")
    assert not output.exists() and not (tmp_path / "cache").exists()


def test_refuses_a_host_without_qemu_or_debootstrap_naming_what_to_install(capsys, monkeypatch, as_root,
                                                                            onnx_artifact, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", str(tools))
    one_line_error(capsys, ["emulate", "arm64", str(onnx_artifact)], "qemu-aarch64-static is not installed",
                   "apt-get install -y qemu-user-static debootstrap binfmt-support")
    qemu = shutil.which("qemu-aarch64-static", path="/usr/local/bin:/usr/bin:/bin")
    if qemu is None:
        pytest.skip("qemu-user-static is not installed here: the missing-debootstrap refusal needs it")
    (tools / "qemu-aarch64-static").symlink_to(qemu)
    one_line_error(capsys, ["emulate", "arm64", str(onnx_artifact)], "debootstrap is not installed")


def test_refuses_a_cpu_without_a_shipped_cpuinfo(capsys, as_root, onnx_artifact):
    one_line_error(capsys, ["emulate", "arm64", str(onnx_artifact), "--cpu", "cortex-a53"],
                   "no /proc/cpuinfo for CPU 'cortex-a53'", "cortex-a76")


def test_refuses_a_format_whose_arm_runtime_needs_torch(capsys, onnx_artifact, tmp_path):
    """An ExecuTorch artifact (here an ONNX file's manifest and reference relabelled, which is all the refusal reads)."""
    program = tmp_path / "conv_small.pte"
    shutil.copy(onnx_artifact, program)
    shutil.copy(f"{onnx_artifact}.reference.npz", f"{program}.reference.npz")
    manifest = json.loads(Path(f"{onnx_artifact}.json").read_text())
    Path(f"{program}.json").write_text(json.dumps({**manifest, "format": "executorch"}))
    one_line_error(capsys, ["emulate", "arm64", str(program)], "executorch artifacts cannot run emulated")


def emulation_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mnv4 emulate runs as root"
    missing = [tool for tool in ("qemu-aarch64-static", "debootstrap", "update-binfmts") if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


@pytest.mark.emulate
def test_arm_kernels_pass_every_artifact_with_xnnpack_and_float16_arithmetic(tmp_path):
    """conv_small as TFLite fp32, fp16 and int8 and ONNX fp32 and int8, verified and benched in the emulated root:
    every verdict passes on the ARM kernels, XNNPACK ran every TFLite graph whole, and fp16 computed in float16."""
    unavailable = emulation_unavailable()
    if unavailable:
        pytest.skip(unavailable)
    artifacts = tmp_path / "artifacts"
    for fmt, precision in EMULATED:
        export_to(artifacts, fmt, precision)
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "mnv4", "emulate", "arm64", str(artifacts), "--output-dir",
                             str(output)], capture_output=True, text=True, timeout=1800)
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
