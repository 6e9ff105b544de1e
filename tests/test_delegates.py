"""ExecuTorch delegates (--delegate xnnpack|vulkan|coreml|qnn) through `mnv4 export` with the real toolchains.

Vulkan and Core ML programs lower here but cannot run (the pip ExecuTorch runtime registers XNNPACK, QNN and
OpenVINO only): their export must publish the artifact with its delegation report and structure check, and a
parity record that says "not executed", never a pass. Which options and precisions each delegate takes is the
option table's, tested in test_tables.py; XNNPACK's own program in test_executorch.py."""
import pytest
from conftest import manifest_of

from mnv4.errors import EXIT_BAD_INPUT, EXIT_OK

CONV_SMALL_OPS = 135  # conv_small's operators in an fp32 edge program, all of them delegated


@pytest.mark.parametrize("delegate, label, backend", [("vulkan", "Vulkan", "VulkanBackend"),
                                                      ("coreml", "Core ML", "CoreMLBackend")])
def test_a_delegate_this_runtime_lacks_is_published_reported_and_never_passed(store, delegate, label, backend):
    from executorch.runtime import Runtime

    assert backend not in Runtime.get().backend_registry.registered_backend_names
    artifact = store.get("executorch", delegate=delegate)
    manifest = manifest_of(artifact)
    assert artifact.is_file() and manifest["backend"] == backend
    delegation = manifest["delegation"]
    assert delegation["delegate"] == delegate and delegation["delegate_calls"] >= 1
    assert delegation["delegated_ops"] + sum(delegation["non_delegated_ops"].values()) == delegation["total_ops"]
    assert delegation["delegated_ops"] >= CONV_SMALL_OPS and delegation["non_delegated_ops"] == {}
    structure = manifest["structure_check"]
    assert "forward" in structure["methods"] and structure["inputs"] == [[1, 3, 64, 64]]
    assert structure["outputs"] == [[1, 1000]]
    parity = manifest["parity"]
    assert parity["passed"] is None
    assert "not executed" in parity["status"] and f"no {label} runtime here" in parity["status"]
    assert backend in parity["status"]


def test_verify_of_an_unrunnable_delegate_says_not_executed_and_is_no_failure(store, cli):
    result = cli("verify", store.get("executorch", delegate="vulkan"))
    assert result.returncode == EXIT_OK
    assert "not executed on this platform: no Vulkan runtime here" in result.stderr


def test_the_coreml_delegate_bakes_in_its_compute_units_and_target(store):
    manifest = manifest_of(store.get("executorch", delegate="coreml"))
    assert manifest["compute_units"] == "all" and manifest["minimum_deployment_target"] == "iOS17"


def test_a_qnn_delegate_needs_its_sdk_before_any_work(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    result = cli("export", "--format", "executorch", "--delegate", "qnn", "--precision", "fp16")
    assert result.returncode == EXIT_BAD_INPUT and "QNN_SDK_ROOT is not set" in result.stderr
    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path))
    result = cli("export", "--format", "executorch", "--delegate", "qnn", "--precision", "fp16")
    assert result.returncode == EXIT_BAD_INPUT and "has no lib/x86_64-linux-clang/libQnnHtp.so" in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_a_non_default_delegate_names_its_default_output():
    from mnv4.export import ExportRequest, default_output

    for delegate, name in ((None, "mnv4_conv_small_r64_fp32.pte"), ("xnnpack", "mnv4_conv_small_r64_fp32.pte"),
                           ("vulkan", "mnv4_conv_small_r64_fp32_vulkan.pte")):
        assert default_output(ExportRequest("conv_small", delegate=delegate), "executorch", 64).name == name
