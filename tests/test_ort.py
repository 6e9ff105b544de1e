"""ORT format (ONNX Runtime Mobile): mnv4's ONNX export converted by onnxruntime's own tool, for arm by default, with
the operators a minimal onnxruntime build needs written beside it, and verified in onnxruntime like every artifact."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import assert_one_line_error, check_int8_manifest, manifest_of, parity_in_oldest_onnxruntime
from onnxruntime.tools.reduced_build_config_parser import parse_config

import mnv4
from mnv4.artifact.files import companion_paths, partial_path, sha256
from mnv4.export import ExportRequest, export
from mnv4.runtimes import load

# The two stored ORT artifacts: seeded float32, and the trained fixture in int8 (its held-out accuracy judged too).
REQUESTS = {"fp32": {}, "int8": {"fixture": True, "precision": "int8"}}


@pytest.fixture(scope="module")
def artifacts(store):
    return {name: store.get("ort", **options) for name, options in REQUESTS.items()}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_it_passed_parity_in_onnxruntime_for_arm_and_verifies_again(name, artifacts, cli):
    manifest = manifest_of(artifacts[name])
    assert manifest["format"] == "ort" and manifest["parity"]["passed"] is True
    assert manifest["target_platform"] == "arm"
    assert manifest["optimization"] == {"style": "Fixed", "level": "all", "disabled_optimizers": ["NchwcTransformer"],
                                        "qdq_int8_allowed": True}
    if name == "int8":
        # Quantized for the arm target, whatever CPU exported it: int8 activations, as onnxruntime advises for ARM.
        assert check_int8_manifest(manifest)["details"]["activation_type"] == "int8"
    result = cli("verify", artifacts[name])
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stderr


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_config_beside_it_lists_the_operators_of_its_graph(name, artifacts, tmp_path):
    """The config, read by onnxruntime's own parser (the one its minimal build uses), names exactly the operators
    of the graph the .ort holds (read back through onnxruntime, unoptimized); the manifest records its name and sha256."""
    artifact = artifacts[name]
    config = companion_paths(artifact)["required_operators"]
    assert config.name == artifact.stem + ".required_operators.config"
    assert manifest_of(artifact)["companions"] == {"required_operators": {"file": config.name, "sha256": sha256(config)}}
    required, _ = parse_config(str(config))
    listed = {(domain, op) for domain, opsets in required.items() for ops in opsets.values() for op in ops}
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "graph.onnx")
    onnxruntime.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "graph.onnx")).graph
    assert listed == {(node.domain or "ai.onnx", node.op_type) for node in graph.node}
    expected = {"QLinearConv", "QLinearAdd"} if name == "int8" else {"FusedConv"}  # fused for arm's kernels
    assert expected <= {op for _, op in listed}
    assert not any(domain == "com.microsoft.nchwc" for domain, _ in listed)


@pytest.mark.devices
@pytest.mark.parametrize("name", list(REQUESTS))
def test_onnxruntime_1_17_runs_it_and_it_passes_parity(name, artifacts, tmp_path):
    """An app that pins an older ONNX Runtime Mobile reads the file too (the int8 one with its arm fusions), and it
    passes parity there, the fixture's accuracy included."""
    parity = parity_in_oldest_onnxruntime(artifacts[name], tmp_path)
    assert parity["passed"], parity["failures"]


def test_the_description_of_the_onnx_file_carries_into_the_ort_file(artifacts):
    meta = onnxruntime.InferenceSession(str(artifacts["fp32"]), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.version == 1 and "Input 'pixels': float32 NCHW" in meta.description
    assert len(json.loads(meta.custom_metadata_map["labels"])) == 1000
    assert meta.custom_metadata_map["mnv4_version"] == mnv4.__version__


def test_amd64_bakes_in_x86_only_nchwc_operators_that_still_compute_the_same(artifacts, tmp_path, cli):
    output = tmp_path / "amd64.ort"
    result = cli("export", "--format", "ort", "--resolution", 64, "--target-platform", "amd64", "--no-verify",
                 "--output", output, "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = manifest_of(output)
    assert manifest["target_platform"] == "amd64" and manifest["optimization"]["disabled_optimizers"] == []
    assert "com.microsoft.nchwc;1" in manifest["operators"]
    assert "com.microsoft.nchwc;1;" in companion_paths(output)["required_operators"].read_text()
    pixels = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    amd64, arm = (load(path).run(pixels) for path in (output, artifacts["fp32"]))
    np.testing.assert_allclose(amd64, arm, rtol=0, atol=1e-3)


def test_target_platform_is_for_ort_alone_and_fp16_is_refused(cli):
    assert_one_line_error(cli("export", "--format", "onnx", "--target-platform", "arm"),
                          "--target-platform is for ort, not onnx")
    assert_one_line_error(cli("export", "--format", "ort", "--precision", "fp16"),
                          "ORT export supports precision fp32 or int8, not 'fp16'")


def test_a_failed_export_leaves_neither_file_and_removes_a_killed_ones(tmp_path, monkeypatch):
    """The exporter wrote the .ort and its config, then failed: neither is left, under its partial name or its own;
    the partial files of a killed export (a process that is gone) are removed too."""
    import mnv4.export.ort as ort_export

    output = tmp_path / "model.ort"
    killed = partial_path(output, pid=2**22 + 12345)  # above any pid this kernel hands out
    for path in (killed, *companion_paths(killed).values()):
        path.write_bytes(b"half written")

    def fails_after_writing(model, example, path, options, calibration, description=None):
        path.write_bytes(b"an ort file")
        companion_paths(path)["required_operators"].write_text("ai.onnx;11;Conv\n")
        raise RuntimeError("the converter failed")

    monkeypatch.setattr(ort_export, "export", fails_after_writing)
    with pytest.raises(RuntimeError, match="the converter failed"):
        export("ort", ExportRequest("conv_small", resolution=64), output)
    assert list(tmp_path.iterdir()) == []
