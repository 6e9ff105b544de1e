"""ExecuTorch (XNNPACK) and Core ML exports with their real toolchains, against the PyTorch model.

ExecuTorch artifacts run in the ExecuTorch runtime on real photos. Core ML artifacts are converted,
saved and read back everywhere, and run in Core ML on macOS and in the ML-program interpreter elsewhere
(tests/test_coreml_program.py covers the interpreter). Each parity check prints its line (relative
error, cosine, top-1 agreement); run with -s to see them.
"""
import numpy as np
import pytest
import torch
from conftest import Reference, reference_for

import mnv4
from mnv4.artifact.parity import THRESHOLDS, compare
from mnv4.errors import UnsupportedOptionError
from mnv4.export import coreml as coreml_export
from mnv4.export import executorch as executorch_export
from mnv4.runtimes.coreml import CoreMLRunner
from mnv4.runtimes.executorch import ExecuTorchRunner

FP16_ARITHMETIC = THRESHOLDS["fp16-arithmetic"]  # XNNPACK fp16 computes in float16 (see artifact/parity.py)
EDGE_CASTS = {"dim_order_ops._to_dim_order_copy.default": 2}  # float32 -> float16 in, float16 -> float32 out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export once per (variant, exporter, options) for all the tests here; returns (path, facts)."""
    made = {}

    def export(reference: Reference, exporter, suffix: str, **options):
        key = (reference.variant, exporter.__name__, tuple(sorted(options.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("artifact") / f"model{suffix}"
            example = reference.example(2 if options.get("dynamic_batch") else 1)
            made[key] = path, exporter.export(reference.model, example, path, **options)
        return made[key]

    return export


def check_parity(label: str, expected: np.ndarray, actual: np.ndarray, limits: dict) -> None:
    parity = compare(expected, actual)
    print(f"\n{label}: relative error {parity.rel_err:.2e}, min cosine {parity.cosine:.6f}, "
          f"top-1 agreement {parity.top1_agreement:.0%}")
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert parity.rel_err <= limits["rel_err"]
    assert limits["cosine"] is None or parity.cosine >= limits["cosine"]


# ----------------------------------------------------------------------------------------- ExecuTorch

def test_executorch_fp32_runs_entirely_in_xnnpack(reference, exported):
    """The .pte loaded directly with executorch.runtime: one XNNPACK call holding every operator."""
    from executorch.runtime import Runtime

    path, facts = exported(reference, executorch_export, ".pte")
    assert facts["delegation"]["non_delegated_ops"] == {} and facts["delegation"]["delegate_calls"] == 1
    assert facts["delegation"]["delegated_ops"] > 100
    assert facts["input_shape"] == [1, 3, reference.resolution, reference.resolution]
    assert facts["input_layout"] == "NCHW" and facts["input_dtype"] == "float32"

    program = Runtime.get().load_program(path)
    assert program.method_names == {"forward", executorch_export.DYNAMIC_BATCH_METHOD}
    forward = program.load_method("forward")
    assert list(forward.metadata.input_tensor_meta(0).sizes()) == facts["input_shape"]
    logits = np.concatenate([forward.execute([torch.from_numpy(image[None])])[0].numpy()
                             for image in reference.inputs])
    check_parity(f"executorch {reference.variant} fp32", reference.logits, logits, THRESHOLDS["fp32"])


def test_executorch_attention_with_dynamic_batch_runs_entirely_in_xnnpack(tmp_path):
    """Multi-query attention (one key/value head for four query heads, keys and values downsampled),
    on its own so that its output is not scaled down by a block's 1e-5 layer scale: its broadcast
    matmuls and rank-changing reshapes must lower to XNNPACK, also with a symbolic batch."""
    attention = dict(mnv4.create_model("hybrid_medium").named_modules())["blocks.2.4.attn"].eval()
    inputs = torch.randn(20, 160, 16, 16, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "attention.pte"
    facts = executorch_export.export(attention, inputs[:2], path, dynamic_batch=True)
    assert facts["delegation"]["non_delegated_ops"] == {} and facts["delegation"]["delegate_calls"] == 1
    assert facts["input_shape"] == [-1, 160, 16, 16] and facts["max_batch"] == executorch_export.MAX_BATCH

    runner = ExecuTorchRunner(path)
    assert runner.artifact_batch is None and runner.max_batch == executorch_export.MAX_BATCH
    with torch.no_grad():
        expected = attention(inputs).numpy()
    for batch in (1, 4, 20):  # 20 is past max_batch: the runner splits it
        actual = runner(inputs[:batch].numpy())
        assert actual.shape == expected[:batch].shape
        assert np.abs(actual - expected[:batch]).max() / np.abs(expected).max() <= THRESHOLDS["fp32"]["rel_err"]


def test_executorch_fp16_nhwc_dynamic_batch_behind_an_nchw_runner(conv_small, exported):
    path, facts = exported(conv_small, executorch_export, ".pte", precision="fp16", nhwc=True, dynamic_batch=True)
    assert facts["delegation"]["non_delegated_ops"] == EDGE_CASTS and facts["delegation"]["delegate_calls"] == 1
    assert facts["input_layout"] == "NHWC" and facts["input_dtype"] == "float32"
    assert facts["input_shape"] == [-1, conv_small.resolution, conv_small.resolution, 3]
    assert facts["compute_dtype"] == "float16" and facts["max_batch"] == executorch_export.MAX_BATCH

    runner = ExecuTorchRunner(path, threads=2)
    # float16 lowering leaves the batch range at 1024: the exporter's bound is what keeps memory planned for 15
    assert runner.layout == "NHWC" and runner.artifact_batch is None and runner.max_batch == executorch_export.MAX_BATCH
    for batch in (1, len(conv_small.inputs)):
        logits = np.concatenate([runner(conv_small.inputs[i:i + batch])
                                 for i in range(0, len(conv_small.inputs), batch)])
        check_parity(f"executorch conv_small fp16 nhwc batch {batch}", conv_small.logits, logits, FP16_ARITHMETIC)


def test_executorch_runners_with_different_thread_counts_share_the_process(conv_small, exported):
    """ExecuTorch's threadpool is process-wide and XNNPACK keeps a pointer to it: each runner resizes
    it to its own count and reloads its program whenever another runner resized it in between."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    path, _ = exported(conv_small, executorch_export, ".pte")
    one, two = ExecuTorchRunner(path, threads=1), ExecuTorchRunner(path, threads=2)
    images = conv_small.inputs[:2]
    results = []
    for runner in (one, two, one, two):
        results.append(runner(images))
        assert _threadpool_get_thread_count() == runner.threads
    for logits in results:
        np.testing.assert_allclose(logits, results[0], rtol=1e-5, atol=1e-5)


def test_executorch_rejects_unknown_precision(conv_small, tmp_path):
    with pytest.raises(UnsupportedOptionError, match="precision"):
        executorch_export.export(conv_small.model, conv_small.example(1), tmp_path / "m.pte", precision="int8-weights")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- Core ML

@pytest.mark.parametrize("variant, precision, dynamic_batch", [
    ("conv_small", "fp32", False),
    ("conv_small", "fp16", True),
    pytest.param("hybrid_medium", "fp16", False, marks=pytest.mark.matrix),
])
def test_coreml_mlpackage_is_saved_and_reads_back(variant, precision, dynamic_batch, exported):
    import coremltools as ct

    reference = reference_for(variant)
    path, facts = exported(reference, coreml_export, ".mlpackage", precision=precision, dynamic_batch=dynamic_batch)
    assert path.is_dir() and (path / "Manifest.json").is_file()
    size = reference.resolution
    assert facts["input_shape"] == [-1 if dynamic_batch else 1, 3, size, size]
    assert facts["input_dtype"] == "float32"
    assert facts["compute_dtype"] == ("float16" if precision == "fp16" else "float32")

    spec = ct.utils.load_spec(str(path))
    assert spec.WhichOneof("Type") == "mlProgram"
    (model_input,), (model_output,) = spec.description.input, spec.description.output
    assert model_input.name == facts["input_name"] and model_output.name == facts["output_name"]
    # float32 in and out also for fp16, which would otherwise make both float16
    assert model_input.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert model_output.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert list(model_input.type.multiArrayType.shape) == [1, 3, size, size]
    batch_range = [(r.lowerBound, r.upperBound) for r in model_input.type.multiArrayType.shapeRange.sizeRanges][:1]
    assert batch_range == ([(1, facts["max_batch"])] if dynamic_batch else [])


def test_coreml_image_input_folds_the_normalisation(conv_small, tmp_path):
    import coremltools as ct

    path = tmp_path / "model.mlpackage"
    facts = coreml_export.export(conv_small.model, conv_small.example(1), path, image_input=True)
    (model_input,) = ct.utils.load_spec(str(path)).description.input
    assert model_input.name == "image" and model_input.type.WhichOneof("Type") == "imageType"
    assert model_input.type.imageType.width == model_input.type.imageType.height == conv_small.resolution

    # Core ML's one scale and per-channel bias, then the model's per-channel gain, give the exact
    # normalisation; the single scale alone is off by the ImageNet stds' spread around their mean.
    folding = facts["image_normalisation"]
    pixels = np.arange(256, dtype=np.float64)[:, None]
    folded = (folding["scale"] * pixels + folding["bias"]) * folding["channel_gain"]
    mean, std = np.asarray(conv_small.model.preprocessing.mean), np.asarray(conv_small.model.preprocessing.std)
    np.testing.assert_allclose(folded, (pixels / 255 - mean) / std, rtol=1e-12, atol=1e-12)
    assert folding["max_scale_deviation"] == pytest.approx(np.abs(std / std.mean() - 1).max())
    assert 0.01 < folding["max_scale_deviation"] < 0.02


@pytest.mark.parametrize("options, message", [
    ({"nhwc": True}, "NCHW"),
    ({"image_input": True, "dynamic_batch": True}, "one image"),
    ({"precision": "int4"}, "precision"),
    ({"precision": "int8"}, "needs calibration images"),
])
def test_coreml_rejects_what_it_cannot_honour(options, message, conv_small, tmp_path):
    with pytest.raises(UnsupportedOptionError, match=message):
        coreml_export.export(conv_small.model, conv_small.example(2), tmp_path / "m.mlpackage", **options)
    assert not list(tmp_path.iterdir())


def test_coreml_runner(conv_small, exported):
    """The platform's Core ML runner (predict on macOS, the ML-program interpreter elsewhere) matches PyTorch."""
    path, _ = exported(conv_small, coreml_export, ".mlpackage", precision="fp32", dynamic_batch=False)
    check_parity(f"{CoreMLRunner.runtime} conv_small fp32", conv_small.logits, CoreMLRunner(path)(conv_small.inputs),
                 THRESHOLDS["fp32"])
