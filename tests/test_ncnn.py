"""ncnn format: the model converted by pnnx into a .param (the graph) and a .bin beside it (the weights, the format's
companion, recorded with its sha256), verified in ncnn on the CPU in float32; on Vulkan (Mesa's software device) in
the device tier, where ncnn computes in float16 as phones run it."""
import json
from pathlib import Path

import ncnn
import numpy as np
import pytest
from conftest import assert_one_line_error, copy_artifact, flip_a_byte, manifest_of, seeded
from skimage import data

from mnv4.artifact.files import companion_paths, sha256
from mnv4.artifact.precisions import FLOAT16_ARITHMETIC
from mnv4.bench.peers import export_peer, timm_model
from mnv4.errors import MNV4Error
from mnv4.export.ncnn import layer_counts, parse
from mnv4.runtimes.ncnn import FLOAT16_OPTIONS, NcnnRunner, NcnnVulkanRunner

ASTRONAUT = Path(data.__file__).parent / "astronaut.png"
# The two stored ncnn artifacts: seeded float32, and the trained fixture with float16 weights.
REQUESTS = {"fp32": {}, "fp16": {"fixture": True, "precision": "fp16"}}


@pytest.fixture(scope="module")
def artifacts(store):
    return {name: store.get("ncnn", **options) for name, options in REQUESTS.items()}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_it_passed_parity_in_ncnn_in_float32_and_verifies_again(name, artifacts, cli):
    artifact = artifacts[name]
    manifest = manifest_of(artifact)
    assert manifest["format"] == "ncnn" and manifest["parity"]["passed"] is True
    assert (manifest["input_name"], manifest["output_name"], manifest["input_layout"]) == ("pixels", "logits", "NCHW")
    assert manifest["compute_dtype"] == "float32" and manifest["weights_dtype"] == ("float16" if name == "fp16" else
                                                                                    "float32")
    assert set(manifest["versions"]) >= {"pnnx", "ncnn"}
    weights = companion_paths(artifact)["weights"]
    assert manifest["companions"] == {"weights": {"file": weights.name, "sha256": sha256(weights)}}
    assert manifest["bytes"] == artifact.stat().st_size + weights.stat().st_size
    # pnnx's blob names are mnv4's in the file apps read
    assert " 0 1 pixels\n" in artifact.read_text() and " logits " in artifact.read_text()
    result = cli("verify", artifact)
    assert result.returncode == 0 and "PASS" in result.stderr, result.stderr


def test_the_graph_is_timm_s_through_the_same_converter_layer_for_layer(artifacts, tmp_path):
    """pnnx writes mnv4's head (mean over H and W, then a 1x1 convolution) as a Reduction and a Convolution, timm's
    (adaptive pooling) as a global Pooling and an InnerProduct; the export rewrites the former as the latter, so that
    the two graphs hold the same layers with the same parameters, in the same order."""
    model = seeded("conv_small")
    timm = timm_model("conv_small", model.model.state_dict(), model.model.num_classes)
    export_peer("ncnn", timm, model.example(1), tmp_path / "timm.param")
    theirs = [(layer.type, layer.params) for layer in parse((tmp_path / "timm.param").read_text())[1]]
    ours = [(layer.type, layer.params) for layer in parse(artifacts["fp32"].read_text())[1]]
    assert ("Pooling", {"0": "1", "4": "1"}) in ours and ours == theirs
    assert manifest_of(artifacts["fp32"])["ncnn"]["layers"] == layer_counts(artifacts["fp32"].read_text())


@pytest.mark.parametrize(("name", "width"), [("fp32", 4), ("fp16", 2)])
def test_the_weights_are_stored_in_the_precision_asked(name, width, artifacts):
    """pnnx's fp16 storage: two bytes a parameter (BatchNorm folded into the convolutions leaves about as many)."""
    params = manifest_of(artifacts[name])["model"]["params"]
    assert 0.95 < companion_paths(artifacts[name])["weights"].stat().st_size / (width * params) < 1.05


@pytest.mark.parametrize("change", ["altered", "missing"])
def test_weights_changed_after_export_are_refused(change, artifacts, cli, tmp_path):
    artifact = copy_artifact(artifacts["fp32"], tmp_path)
    weights = companion_paths(artifact)["weights"]
    if change == "altered":
        flip_a_byte(weights)
    else:
        weights.unlink()
    assert_one_line_error(cli("verify", artifact), weights.name)
    assert_one_line_error(cli("run", artifact, ASTRONAUT), weights.name)


@pytest.mark.parametrize(("flags", "said"), [(("--batch", 2), "one image at a time"),
                                             (("--dynamic-batch",), "--dynamic-batch is for"),
                                             (("--precision", "int8"), "fp32 or fp16")])
def test_what_ncnn_cannot_hold_is_refused_before_any_work(flags, said, cli, tmp_path):
    result = cli("export", "--format", "ncnn", "--resolution", 64, *flags, "--output", tmp_path / "x.param")
    assert_one_line_error(result, said)
    assert not list(tmp_path.iterdir())


def verified(cli, artifact, runtime) -> tuple[int, dict, str]:
    result = cli("verify", artifact, "--json", "--runtime", runtime)
    return result.returncode, json.loads(result.stdout), result.stderr


@pytest.mark.devices
def test_ncnn_vulkan_runs_ncnn_own_defaults_as_phones_do(vulkan, artifacts):
    """`ncnn-vulkan` is what an app gets from `ncnn::Net` on a phone's GPU: every storage and arithmetic option at
    ncnn's default (float16 on, bfloat16 off), Vulkan on; `ncnn-vulkan-fp32` differs only by float16 off."""
    defaults = ncnn.Option()
    options = [name for name in dir(defaults) if name.startswith("use_") and name != "use_vulkan_compute"]
    for fp16 in (True, False):
        runner = NcnnVulkanRunner(artifacts["fp32"], fp16=fp16)
        assert runner.net.opt.use_vulkan_compute
        differing = {name for name in options if getattr(runner.net.opt, name) != getattr(defaults, name)}
        assert differing == (set() if fp16 else set(FLOAT16_OPTIONS))


@pytest.mark.devices
def test_the_trained_fixture_on_vulkan_in_float16_passes_and_a_changed_bin_fails(vulkan, artifacts, cli, tmp_path):
    """ncnn's float16 storage and arithmetic (ncnn 1.0.20261020, lavapipe) within the float16-arithmetic limits,
    keeping the fixture's held-out top-1; the same artifact with its .bin altered is refused before it runs."""
    code, parity, stderr = verified(cli, artifacts["fp16"], "ncnn-vulkan")
    assert code == 0 and parity["passed"] and parity["task"]["passed"], stderr
    assert parity["tolerance"] == FLOAT16_ARITHMETIC.name
    assert (parity["runtime"], parity["device"], parity["emulated"]) == ("ncnn-vulkan", "gpu", True)
    assert parity["execution"]["float16_arithmetic"] is True and parity["execution"]["fully_on_gpu"] is True
    artifact = copy_artifact(artifacts["fp16"], tmp_path)
    weights = companion_paths(artifact)["weights"]
    flip_a_byte(weights)
    assert_one_line_error(cli("verify", artifact, "--runtime", "ncnn-vulkan"), weights.name)


@pytest.mark.devices
def test_the_seeded_model_on_vulkan_passes_in_float16_and_matches_the_cpu_in_float32(vulkan, artifacts, cli):
    """The seeded model (BatchNorm calibrated on photos, untrained) has larger activations than the fixture's: ncnn's
    float16 path stays within the float16 limits; with float16 off on the same device the numbers are float32's."""
    code, parity, stderr = verified(cli, artifacts["fp32"], "ncnn-vulkan")
    assert code == 0 and parity["passed"], stderr
    assert parity["tolerance"] == FLOAT16_ARITHMETIC.name and parity["execution"]["float16_arithmetic"] is True
    code, parity, stderr = verified(cli, artifacts["fp32"], "ncnn-vulkan-fp32")
    assert code == 0 and parity["passed"] and parity["execution"]["float16_arithmetic"] is False, stderr
    assert parity["worst_float64"]["artifact"]["rel_err"] < 1e-4


@pytest.mark.devices
def test_a_graph_with_a_layer_that_has_no_vulkan_kernel_is_no_gpu_verdict(vulkan, tmp_path):
    """ncnn would run such a layer on the CPU between GPU layers (pnnx writes the hybrid variants' attention with
    ExpandDims and MatMul, which have none in ncnn 1.0.20261020): the Vulkan runner names them and refuses; the CPU
    runner runs the graph."""
    graph = tmp_path / "graph.param"
    graph.write_text("7767517\n3 3\nInput pixels 0 1 pixels 0=4 1=4 2=3\n"
                     "ExpandDims unsqueeze 1 1 pixels x -23303=1,0\nReshape flat 1 1 x logits 0=-1\n")
    companion_paths(graph)["weights"].write_bytes(b"")
    image = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    assert np.array_equal(NcnnRunner(graph).run(image), image.reshape(1, -1))
    with pytest.raises(MNV4Error, match="ncnn-vulkan: ncnn has no Vulkan kernel for ExpandDims in graph.param"):
        NcnnVulkanRunner(graph)
