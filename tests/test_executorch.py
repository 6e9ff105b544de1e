"""ExecuTorch programs in the ExecuTorch runtime against the PyTorch model, on real photos: every operator in one
XNNPACK call (attention too, with a free batch), float16 arithmetic behind float32 I/O and an NHWC input, int8 judged
by the trained fixture, and the process-wide threadpool shared by runners of different thread counts."""
import numpy as np
import pytest
import torch
from conftest import Trained, check_int8_manifest, check_parity, manifest_of, seeded, trained_model

import mnv4
from mnv4.artifact.options import ArtifactOptions
from mnv4.artifact.precisions import FLOAT16_ARITHMETIC, FP32
from mnv4.export import executorch as executorch_export
from mnv4.runtimes.executorch import DYNAMIC_BATCH_METHOD, IMAGE_INPUT_METHOD, ExecuTorchRunner

EDGE_CASTS = {"dim_order_ops._to_dim_order_copy.default": 2}  # float32 -> float16 in, float16 -> float32 out
CONV_SMALL_OPS = 135  # conv_small's operators in an fp32 edge program


def test_fp32_runs_entirely_in_xnnpack(store):
    """The .pte loaded directly with executorch.runtime: one XNNPACK call holding every operator."""
    from executorch.runtime import Runtime

    artifact = store.get("executorch")
    manifest = manifest_of(artifact)
    assert manifest["backend"] == "XnnpackBackend" and manifest["parity"]["passed"] is True
    assert manifest["delegation"] == {"delegate": "xnnpack", "delegated_ops": CONV_SMALL_OPS,
                                      "total_ops": CONV_SMALL_OPS, "non_delegated_ops": {}, "delegate_calls": 1}
    assert manifest["structure_check"]["inputs"] == [[1, 3, 64, 64]] == [manifest["input_shape"]]
    assert manifest["input_layout"] == "NCHW" and manifest["input_dtype"] == "float32"
    program = Runtime.get().load_program(artifact)
    # forward, and the constant methods an app (and the runner) read: export/executorch.constant_methods
    assert program.method_names == {"forward", DYNAMIC_BATCH_METHOD, IMAGE_INPUT_METHOD, "input_name", "input_layout",
                                    "resolution", "mean", "std", "pixel_scale", "variant", "labels"}
    assert program.load_method(IMAGE_INPUT_METHOD).execute([]) == [False]
    assert program.load_method("input_name").execute([]) == ["pixels"]
    forward = program.load_method("forward")
    reference = seeded("conv_small")
    logits = np.concatenate([forward.execute([torch.from_numpy(image[None])])[0].numpy() for image in reference.inputs])
    check_parity("executorch conv_small fp32", reference, logits, FP32.limits)


def test_attention_with_a_dynamic_batch_runs_entirely_in_xnnpack(tmp_path):
    """Multi-query attention (one key/value head for four query heads, keys and values downsampled), on its own so
    that its output is not scaled down by a block's 1e-5 layer scale: its broadcast matmuls and rank-changing
    reshapes must lower to XNNPACK, also with a symbolic batch."""
    attention = dict(mnv4.create_model("hybrid_medium").named_modules())["blocks.2.4.attn"].eval()
    inputs = torch.randn(20, 160, 16, 16, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "attention.pte"
    facts = executorch_export.export(attention, inputs[:2], path, ArtifactOptions(dynamic_batch=True))
    assert facts.delegation.non_delegated_ops == {} and facts.delegation.delegate_calls == 1
    assert facts.interface.input_shape == [-1, 160, 16, 16]
    assert facts.details["max_batch"] == executorch_export.PLANNED_MAX_BATCH
    runner = ExecuTorchRunner(path)
    assert runner.artifact_batch is None and runner.max_batch == executorch_export.PLANNED_MAX_BATCH
    with torch.no_grad():
        expected = attention(inputs).numpy()
    for batch in (1, 4, 20):  # 20 is past max_batch: the runner splits it
        actual = runner(inputs[:batch].numpy())
        assert actual.shape == expected[:batch].shape
        assert np.abs(actual - expected[:batch]).max() / np.abs(expected).max() <= FP32.limits.rel_err


def test_fp16_nhwc_dynamic_batch_behind_an_nchw_runner(store):
    artifact = store.get("executorch", precision="fp16", nhwc=True, dynamic_batch=True)
    manifest = manifest_of(artifact)
    assert manifest["delegation"]["non_delegated_ops"] == EDGE_CASTS and manifest["delegation"]["delegate_calls"] == 1
    assert manifest["input_layout"] == "NHWC" and manifest["input_dtype"] == "float32"
    assert manifest["input_shape"] == [-1, 64, 64, 3] and manifest["max_batch"] == executorch_export.PLANNED_MAX_BATCH
    assert manifest["compute_dtype"] == "float16" and manifest["parity"]["tolerance"] == FLOAT16_ARITHMETIC.name
    runner = ExecuTorchRunner(artifact, threads=2)
    # float16 lowering leaves the batch range at 1024: the exporter's bound is what keeps memory planned for 15
    assert runner.layout == "NHWC" and runner.artifact_batch is None
    assert runner.max_batch == executorch_export.PLANNED_MAX_BATCH
    reference = seeded("conv_small")
    for batch in (1, len(reference.inputs)):
        logits = np.concatenate([runner(reference.inputs[i:i + batch]) for i in range(0, len(reference.inputs), batch)])
        check_parity(f"executorch conv_small fp16 nhwc batch {batch}", reference, logits, FLOAT16_ARITHMETIC)


def test_runners_with_different_thread_counts_share_the_process(store):
    """ExecuTorch's threadpool is process-wide and XNNPACK keeps a pointer to it: each runner resizes it to its own
    count and reloads its program whenever another runner resized it in between."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    artifact = store.get("executorch")
    one, two = ExecuTorchRunner(artifact, threads=1), ExecuTorchRunner(artifact, threads=2)
    images = seeded("conv_small").inputs[:2]
    results = []
    for runner in (one, two, one, two):
        results.append(runner(images))
        assert _threadpool_get_thread_count() == runner.threads
    for logits in results:
        np.testing.assert_allclose(logits, results[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- int8

def test_int8_keeps_the_fixtures_accuracy_inside_one_delegate(store):
    """A fixed batch of 4 (calibration and the runner's padded last batch); every quantized convolution, the input's
    quantization and the output's dequantization inside one XNNPACK call."""
    fixture = trained_model("conv_small")
    artifact = store.get("executorch", fixture=True, precision="int8", batch=4)
    manifest = manifest_of(artifact)
    quantization = check_int8_manifest(manifest)
    assert manifest["input_shape"] == [4, 3, 64, 64] and manifest["input_dtype"] == manifest["output_dtype"] == "float32"
    assert manifest["delegation"]["delegate_calls"] == 1 and manifest["delegation"]["non_delegated_ops"] == {}
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in fixture.model.modules())
    assert quantization["quantized_op_types"]["aten.convolution.default"] == convs
    assert quantization["quantized_op_types"]["aten.linear.default"] == 1
    assert quantization["float_ops"] == {}
    runner = ExecuTorchRunner(artifact, threads=1)
    assert runner.artifact_batch == 4
    fixture.check_accuracy("executorch conv_small int8", runner)


@pytest.mark.matrix
def test_int8_nhwc(store):
    artifact = store.get("executorch", fixture=True, precision="int8", nhwc=True)
    manifest = manifest_of(artifact)
    quantization = check_int8_manifest(manifest)
    assert manifest["input_layout"] == "NHWC" and manifest["delegation"]["non_delegated_ops"] == {}
    # The NHWC -> NCHW permute runs in XNNPACK before the input's quantization.
    assert set(quantization["float_ops"]) <= {"aten.permute_copy.default", "dim_order_ops._clone_dim_order.default"}
    runner = ExecuTorchRunner(artifact, threads=1)
    assert runner.layout == "NHWC"
    trained_model("conv_small").check_accuracy("executorch conv_small int8 nhwc", runner)


@pytest.mark.matrix
def test_int8_hybrid_keeps_the_fixtures_accuracy(store):
    """Attention's bmm and softmax stay float inside the delegate (XNNPACKQuantizer does not annotate them)."""
    artifact = store.get("executorch", variant="hybrid_medium", fixture=True, precision="int8")
    manifest = manifest_of(artifact)
    quantization = check_int8_manifest(manifest)
    assert manifest["delegation"]["delegate_calls"] == 1 and manifest["delegation"]["non_delegated_ops"] == {}
    assert {"aten.bmm.default", "aten._softmax.default"} <= set(quantization["float_ops"])
    Trained("hybrid_medium").check_accuracy("executorch hybrid_medium int8", ExecuTorchRunner(artifact, threads=2))
