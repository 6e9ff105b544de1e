"""The Core ML program interpreter: real coremltools conversions executed on Linux, against PyTorch.

Each parity check prints its line (relative error, cosine, top-1 agreement); run with -s to see them.
The tamper tests alter a saved program the way a bad conversion could (one weight in the weight file,
one operation's stride or epsilon in the program) and show that parity then fails."""
import shutil
import struct
import sys

import numpy as np
import pytest
from conftest import check_parity, seeded

from mnv4.artifact.parity import RANDOM_INPUTS, compare, truth_breaches
from mnv4.artifact.precisions import FLOAT16_ARITHMETIC, FP32, Limits
from mnv4.errors import MNV4Error, PlatformUnsupportedError, UnsupportedOperationError
from mnv4.model import VARIANTS
from mnv4.runtimes import runner_class
from mnv4.runtimes.coreml import CoreMLPredictRunner, CoreMLProgramRunner
from mnv4.runtimes.coreml_program import MODEL_FILE, WEIGHTS_DIR, supported_operations

# The interpreter's bar: ten times tighter than the fp32 export limit (judged, as exports are, against float64).
FP32_INTERPRETER = Limits("fp32-interpreter", 1e-5, None)
FP16 = {"precision": "fp16", "dynamic_batch": True, "compute_units": "cpu_and_ne", "minimum_deployment_target": "iOS16"}


def altered_copy(package, tmp_path):
    copy = tmp_path / package.name
    shutil.copytree(package, copy)
    return copy


def load_program_spec(package):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / MODEL_FILE).read_bytes())
    return spec


def save_program_spec(spec, package):
    (package / MODEL_FILE).write_bytes(spec.SerializeToString())


def main_operations(spec):
    function = spec.mlProgram.functions["main"]
    return function.block_specializations[function.opset].operations


def const_feeding(spec, op, input_name):
    """The const operation bound to `input_name` of `op`, checked to feed no other operation."""
    (argument,) = op.inputs[input_name].arguments
    uses = [other for other in main_operations(spec)
            for bound in other.inputs.values() for a in bound.arguments if a.name == argument.name]
    assert len(uses) == 1, f"{argument.name} is shared"
    return next(c for c in main_operations(spec) if c.type == "const" and c.outputs[0].name == argument.name)


def fails_fp32_parity(reference, package) -> list[str]:
    """What the fp32 parity gate finds wrong with `package` (against float64, as an export is judged)."""
    logits = CoreMLProgramRunner(package)(reference.inputs)
    return truth_breaches(reference.logits64, reference.logits, logits, FP32.limits, len(reference.inputs) - RANDOM_INPUTS)


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("variant", ["conv_small", "hybrid_medium"])
def test_fp32_program_matches_pytorch(variant, store):
    reference = seeded(variant)
    runner = CoreMLProgramRunner(store.get("coreml", variant=variant), threads=2)
    check_parity(f"coreml interpreter {variant} fp32", reference, runner(reference.inputs), FP32_INTERPRETER)


def test_fp16_program_runs_in_float16_and_whole_dynamic_batches(store):
    """Every intermediate of an fp16 program is float16: the result differs from PyTorch by float16 rounding
    (within the fp16-arithmetic limits), and from the fp32 program by more than fp32 rounding."""
    reference = seeded("conv_small")
    runner = CoreMLProgramRunner(store.get("coreml", **FP16), threads=2)
    assert runner.interface.artifact_batch is None
    assert {str(value.dtype) for value in runner.program.constants.values() if hasattr(value, "dtype")
            and value.dtype.is_floating_point} == {"torch.float16"}
    logits = runner(reference.inputs)
    check_parity("coreml interpreter conv_small fp16, batch 11", reference, logits, FLOAT16_ARITHMETIC)
    assert compare(reference.logits, logits).rel_err > 100 * FP32_INTERPRETER.rel_err


def test_image_input_program_gets_the_pixels_back(store, tmp_path):
    """An image-input program is fed 255 * (x * std + mean), and its own scale, bias and channel gain
    normalise the pixels again: parity covers the image preprocessing."""
    reference = seeded("conv_small")
    pre = reference.preprocessing
    path = store.get("coreml", image_input=True)
    runner = CoreMLProgramRunner(path)
    runner.normalisation = (pre.mean, pre.std)
    assert runner.interface.image_input and runner.image_input and runner.interface.artifact_batch == 1
    check_parity("coreml interpreter conv_small fp32 image input", reference, runner(reference.inputs), FP32_INTERPRETER)
    # Without mean and std, they are read from the manifest beside it; with no manifest there, it cannot run.
    check_parity("image input, mean and std from the manifest", reference, CoreMLProgramRunner(path)(reference.inputs),
                 FP32_INTERPRETER)
    alone = tmp_path / path.name
    shutil.copytree(path, alone)
    with pytest.raises(MNV4Error, match="takes RGB pixels: the mean and std its inputs were normalised with come from"):
        CoreMLProgramRunner(alone)(reference.inputs)


# --------------------------------------------------------------------------------------- compression

@pytest.mark.parametrize("compression", ["int8", "uint8-asymmetric", "palettised-4bit", "palettised-6bit-uniform"])
def test_compressed_weights_decompress_as_coremltools_does(compression, store, tmp_path):
    """constexpr_affine_dequantize and constexpr_lut_to_dense, implemented from the MIL definitions, give
    exactly what coremltools' own decompress_weights writes back as plain constants. (The seeded weights
    are far from a trained model's, so compressed-vs-PyTorch error is large and says nothing here.)"""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    configs = {
        "int8": (cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")),
        "uint8-asymmetric": (cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(mode="linear", dtype="uint8")),
        "palettised-4bit": (cto.palettize_weights, cto.OpPalettizerConfig(mode="kmeans", nbits=4)),
        "palettised-6bit-uniform": (cto.palettize_weights, cto.OpPalettizerConfig(mode="uniform", nbits=6)),
    }
    compress, config = configs[compression]
    reference = seeded("conv_small")
    model = ct.models.MLModel(str(store.get("coreml")), skip_model_load=True)
    compressed = compress(model, cto.OptimizationConfig(global_config=config))
    compressed.save(str(tmp_path / "compressed.mlpackage"))
    cto.decompress_weights(compressed).save(str(tmp_path / "decompressed.mlpackage"))

    runner = CoreMLProgramRunner(tmp_path / "compressed.mlpackage")
    op_types = {op.type for op in main_operations(runner.program.spec)}
    expected_op = "constexpr_lut_to_dense" if compression.startswith("palettised") else "constexpr_affine_dequantize"
    assert expected_op in op_types
    logits = runner(reference.inputs[:4])
    np.testing.assert_array_equal(logits, CoreMLProgramRunner(tmp_path / "decompressed.mlpackage")(reference.inputs[:4]))
    assert not np.array_equal(logits, CoreMLProgramRunner(store.get("coreml"))(reference.inputs[:4]))


# ------------------------------------------------------------------------------------ the check can fail

def test_one_changed_weight_in_the_weight_file_fails_parity(store, tmp_path):
    reference = seeded("conv_small")
    assert fails_fp32_parity(reference, store.get("coreml")) == []
    package = altered_copy(store.get("coreml"), tmp_path)
    spec = load_program_spec(package)
    stem = next(op for op in main_operations(spec) if op.type == "conv")
    blob = const_feeding(spec, stem, "weight").attributes["val"].blobFileValue
    weights = package / WEIGHTS_DIR / blob.fileName.split("/")[-1]
    data = bytearray(weights.read_bytes())
    # MIL blob metadata: sentinel 0xDEADBEEF, data type, size in bytes, offset of the data.
    sentinel, _, size, offset = struct.unpack_from("<IIQQ", data, blob.offset)
    assert sentinel == 0xDEADBEEF and size == 32 * 3 * 3 * 3 * 4
    (first,) = struct.unpack_from("<f", data, offset)
    struct.pack_into("<f", data, offset, first + 0.5)  # one float32 of the stem convolution
    weights.write_bytes(bytes(data))

    failures = fails_fp32_parity(reference, package)
    print(f"\none weight +0.5: {failures}")
    assert failures and failures[0].startswith("relative error")


@pytest.mark.parametrize("variant, op_type, input_name, altered", [
    ("conv_small", "conv", "strides", [1, 1]),  # the stem's stride 2 -> 1
    ("hybrid_medium", "batch_norm", "epsilon", 1e-2),  # attention's query norm, 1e-5 -> 1e-2
])
def test_one_changed_attribute_fails_parity(variant, op_type, input_name, altered, store, tmp_path):
    reference = seeded(variant)
    assert fails_fp32_parity(reference, store.get("coreml", variant=variant)) == []
    package = altered_copy(store.get("coreml", variant=variant), tmp_path)
    spec = load_program_spec(package)
    op = next(op for op in main_operations(spec) if op.type == op_type)
    tensor = const_feeding(spec, op, input_name).attributes["val"].immediateValue.tensor
    values = tensor.ints.values if tensor.WhichOneof("value") == "ints" else tensor.floats.values
    del values[:]
    values.extend(altered if isinstance(altered, list) else [altered])
    save_program_spec(spec, package)

    failures = fails_fp32_parity(reference, package)
    print(f"\n{op_type} {input_name} -> {altered}: {failures}")
    assert failures and failures[0].startswith("relative error")


def test_an_unknown_operation_is_named_with_its_place(store, tmp_path):
    """`silu` is a real MIL operation that no variant produces, so the interpreter does not implement it."""
    assert "silu" not in supported_operations()
    package = altered_copy(store.get("coreml"), tmp_path)
    spec = load_program_spec(package)
    operations = main_operations(spec)
    index, op = next((i, op) for i, op in enumerate(operations) if op.type == "relu")
    op.type = "silu"
    save_program_spec(spec, package)
    with pytest.raises(UnsupportedOperationError) as raised:
        CoreMLProgramRunner(package)
    message = str(raised.value)
    assert f"operation 'silu' (op {index} of {len(operations)} in function main (CoreML7), " \
           f"output {op.outputs[0].name!r}) is not implemented" in message


# ------------------------------------------------------------------------------------------ the runners

def test_the_platforms_runner_for_an_mlpackage(store, cli):
    """`load` gives Core ML's predict on macOS and the interpreter elsewhere; only predict times Core ML. `mnv4 verify`
    re-runs the interpreter's verdict; the predict-vs-interpreter comparison needs Core ML itself, so off macOS it
    says so in one line."""
    path = store.get("coreml")
    verified = cli("verify", path)
    assert verified.returncode == 0 and "-> PASS" in verified.stderr, verified.stderr
    compared = cli("coreml-compare", path)
    if sys.platform == "darwin":
        assert runner_class(path) is CoreMLPredictRunner and CoreMLPredictRunner.measures_latency
        assert compared.returncode == 0 and "-> PASS" in compared.stdout, compared.stderr
        return
    assert runner_class(path) is CoreMLProgramRunner and not CoreMLProgramRunner.measures_latency
    with pytest.raises(PlatformUnsupportedError, match="Core ML predictions need macOS"):
        CoreMLPredictRunner(path)
    assert compared.returncode == 2 and compared.stderr.startswith("error: ") and "Core ML predictions need macOS" in \
        compared.stderr


@pytest.mark.matrix
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_converts_and_runs_at_fp32(variant, store):
    """All 12 variants at their own resolution: every operation their conversion produces is implemented, with
    fp32 parity."""
    reference = seeded(variant, None)
    runner = CoreMLProgramRunner(store.get("coreml", variant=variant, resolution=None), threads=2)
    check_parity(f"coreml interpreter {variant} fp32", reference, runner(reference.inputs), FP32_INTERPRETER)
