"""ExecuTorch delegates (--delegate xnnpack|vulkan|coreml|qnn) and Core ML's --compute-units and
--minimum-deployment-target, through `mnv4 export` with the real toolchains.

Vulkan and Core ML programs lower here but cannot run (the pip ExecuTorch runtime registers XNNPACK, QNN and
OpenVINO only): their export must publish the artifact with its delegation report and structure check, and a
parity record that says "not executed", never a pass. conv_small at 64 px keeps each export to seconds."""
import json

import pytest

from mnv4.artifact.formats import DEPLOYMENT_TARGETS, FORMATS
from mnv4.cli import main
from mnv4.errors import EXIT_BAD_INPUT, EXIT_OK

RESOLUTION = 64
CONV_SMALL_OPS = 135  # conv_small's operators in an fp32 edge program, all of them delegated


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`mnv4 export` once per option set for the whole module; returns (artifact path, manifest)."""
    made = {}

    def export(*options: str):
        if options not in made:
            folder = tmp_path_factory.mktemp("delegate")
            suffix = FORMATS[options[1]].suffix
            path = folder / f"model{suffix}"
            code = main(["export", *options, "--variant", "conv_small", "--resolution", str(RESOLUTION),
                         "--output", str(path), "--quiet"])
            assert code == EXIT_OK
            made[options] = path, json.loads(path.with_name(path.name + ".json").read_text())
        return made[options]

    return export


@pytest.mark.parametrize("delegate, label, backend", [("vulkan", "Vulkan", "VulkanBackend"),
                                                      ("coreml", "Core ML", "CoreMLBackend")])
def test_a_delegate_this_runtime_lacks_is_published_reported_and_never_passed(exported, delegate, label, backend):
    from executorch.runtime import Runtime

    assert backend not in Runtime.get().backend_registry.registered_backend_names
    path, manifest = exported("--format", "executorch", "--delegate", delegate)
    assert path.is_file() and manifest["backend"] == backend
    delegation = manifest["delegation"]
    assert delegation["delegate"] == delegate and delegation["delegate_calls"] >= 1
    assert delegation["delegated_ops"] + sum(delegation["non_delegated_ops"].values()) == delegation["total_ops"]
    assert delegation["delegated_ops"] >= CONV_SMALL_OPS and delegation["non_delegated_ops"] == {}
    structure = manifest["structure_check"]
    assert "forward" in structure["methods"] and structure["inputs"] == [[1, 3, RESOLUTION, RESOLUTION]]
    assert structure["outputs"] == [[1, 1000]]
    parity = manifest["parity"]
    assert parity["passed"] is None
    assert "not executed" in parity["status"] and f"no {label} runtime here" in parity["status"]
    assert backend in parity["status"]


def test_verify_of_an_unrunnable_delegate_says_not_executed_and_is_no_failure(exported, capfd):
    path, _ = exported("--format", "executorch", "--delegate", "vulkan")
    capfd.readouterr()
    assert main(["verify", str(path)]) == EXIT_OK
    assert "not executed on this platform: no Vulkan runtime here" in capfd.readouterr().err


def test_the_coreml_delegate_bakes_in_its_compute_units_and_target(exported):
    _, manifest = exported("--format", "executorch", "--delegate", "coreml")
    assert manifest["compute_units"] == "all" and manifest["minimum_deployment_target"] == "iOS17"


def test_xnnpack_stays_the_default_passes_parity_and_reports_delegation(exported):
    path, manifest = exported("--format", "executorch")
    assert manifest["backend"] == "XnnpackBackend" and manifest["parity"]["passed"] is True
    assert manifest["delegation"] == {"delegate": "xnnpack", "delegated_ops": CONV_SMALL_OPS,
                                      "total_ops": CONV_SMALL_OPS, "non_delegated_ops": {}, "delegate_calls": 1}
    assert manifest["structure_check"]["inputs"] == [[1, 3, RESOLUTION, RESOLUTION]]


def test_coreml_compute_units_and_target_are_recorded_and_still_verified(exported):
    import coremltools as ct

    path, manifest = exported("--format", "coreml", "--precision", "fp16", "--compute-units", "cpu_and_ne",
                              "--minimum-deployment-target", "iOS16")
    assert manifest["compute_units"] == "cpu_and_ne" and manifest["minimum_deployment_target"] == "iOS16"
    assert "MLComputePlan" in manifest["delegation"]["compute_plan"]
    spec = ct.utils.load_spec(str(path))
    assert spec.specificationVersion == DEPLOYMENT_TARGETS["iOS16"]
    assert spec.description.metadata.userDefined["mnv4.compute_units"] == "cpu_and_ne"
    assert manifest["parity"]["passed"] is True  # the ML-program interpreter runs it on Linux


def test_every_deployment_target_is_one_coremltools_has():
    import coremltools as ct

    for name, version in DEPLOYMENT_TARGETS.items():
        assert getattr(ct.target, name).value == version


@pytest.mark.parametrize("options, fragments", [
    (("--format", "onnx", "--delegate", "vulkan"), ("--delegate is for formats with delegates", "executorch")),
    (("--format", "executorch", "--delegate", "npu"), ("unknown --delegate 'npu'", "xnnpack, vulkan, coreml, qnn")),
    (("--format", "executorch", "--delegate", "qnn", "--precision", "fp16"), ("QNN_SDK_ROOT is not set",)),
    (("--format", "tflite", "--compute-units", "all"), ("--compute-units is for Core ML", "not tflite")),
    (("--format", "executorch", "--minimum-deployment-target", "iOS17"), ("not executorch --delegate xnnpack",)),
    (("--format", "coreml", "--compute-units", "gpu"), ("unknown --compute-units 'gpu'", "cpu_and_ne")),
    (("--format", "coreml", "--minimum-deployment-target", "iOS14"), ("unknown --minimum-deployment-target",)),
    (("--format", "coreml", "--precision", "int8", "--minimum-deployment-target", "iOS16"), ("needs", "iOS17")),
    (("--format", "executorch", "--delegate", "vulkan", "--precision", "int8"), ("fp32 or fp16, not 'int8'",)),
    (("--format", "executorch", "--delegate", "coreml", "--dynamic-batch"), ("--dynamic-batch is not available",)),
])
def test_bad_delegate_options_are_one_line_exit_2_and_write_nothing(options, fragments, tmp_path, monkeypatch,
                                                                      capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    assert main(["export", *options, "--resolution", str(RESOLUTION)]) == EXIT_BAD_INPUT
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_qnn_sdk_folder_without_its_library_is_named(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path))
    assert main(["export", "--format", "executorch", "--delegate", "qnn", "--precision", "fp16"]) == EXIT_BAD_INPUT
    assert "has no lib/x86_64-linux-clang/libQnnHtp.so" in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_non_default_delegate_names_its_default_output():
    from mnv4.export import ExportRequest, default_output

    for delegate, name in ((None, "mnv4_conv_small_r64_fp32.pte"), ("xnnpack", "mnv4_conv_small_r64_fp32.pte"),
                           ("vulkan", "mnv4_conv_small_r64_fp32_vulkan.pte")):
        assert default_output(ExportRequest("conv_small", delegate=delegate), "executorch", 64).name == name
