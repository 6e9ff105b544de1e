"""The Core ML program interpreter: real coremltools conversions executed on Linux, against PyTorch.

Each parity check prints its line (relative error, cosine, top-1 agreement); run with -s to see them.
The tamper tests alter a saved program the way a bad conversion could (one weight in the weight file,
one operation's stride or epsilon in the program) and show that parity then fails."""
import json
import shutil
import struct
import sys

import numpy as np
import pytest
from conftest import reference_for
from test_cli import assert_one_line_error, run_cli
from test_executorch_coreml import check_parity

from mnv4.artifact.parity import THRESHOLDS, breaches, compare
from mnv4.errors import PlatformUnsupportedError, UnsupportedOperationError
from mnv4.export import coreml as coreml_export
from mnv4.model import VARIANTS
from mnv4.runtimes import runner_class
from mnv4.runtimes.coreml import CoreMLPredictRunner, CoreMLProgramRunner
from mnv4.runtimes.coreml_program import MODEL_FILE, WEIGHTS_DIR, supported_operations

FP32_INTERPRETER = {"rel_err": 1e-5, "cosine": None}  # the bar: tighter than the fp32 export limit


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One conversion per (variant, precision, options) for all the tests here; returns the .mlpackage."""
    made = {}

    def convert(variant: str, precision: str, **options):
        key = (variant, precision, tuple(sorted(options.items())))
        if key not in made:
            reference = reference_for(variant)
            path = tmp_path_factory.mktemp("coreml") / "model.mlpackage"
            example = reference.example(2 if options.get("dynamic_batch") else 1)
            coreml_export.export(reference.model, example, path, precision=precision, **options)
            made[key] = path
        return made[key]

    return convert


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
    logits = CoreMLProgramRunner(package)(reference.inputs)
    return breaches(compare(reference.logits, logits), "fp32")


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("variant", ["conv_small", "hybrid_medium"])
def test_fp32_program_matches_pytorch(variant, converted):
    reference = reference_for(variant)
    runner = CoreMLProgramRunner(converted(variant, "fp32"), threads=2)
    check_parity(f"coreml interpreter {variant} fp32", reference.logits, runner(reference.inputs), FP32_INTERPRETER)


@pytest.mark.parametrize("variant", ["conv_small", pytest.param("hybrid_medium", marks=pytest.mark.matrix)])
def test_fp16_program_runs_in_float16(variant, converted):
    """Every intermediate of an fp16 program is float16: the result differs from PyTorch by float16
    rounding (within the fp16-arithmetic limits), and from the fp32 program by more than fp32 rounding."""
    reference = reference_for(variant)
    runner = CoreMLProgramRunner(converted(variant, "fp16"), threads=2)
    assert {str(value.dtype) for value in runner.program.constants.values() if hasattr(value, "dtype")
            and value.dtype.is_floating_point} == {"torch.float16"}
    logits = runner(reference.inputs)
    check_parity(f"coreml interpreter {variant} fp16", reference.logits, logits, THRESHOLDS["fp16-arithmetic"])
    assert compare(reference.logits, logits).rel_err > 100 * FP32_INTERPRETER["rel_err"]


def test_dynamic_batch_program_runs_whole_batches(converted):
    reference = reference_for("conv_small")
    runner = CoreMLProgramRunner(converted("conv_small", "fp32", dynamic_batch=True))
    assert runner.interface.artifact_batch is None
    check_parity("coreml interpreter conv_small fp32 dynamic batch 11", reference.logits, runner(reference.inputs),
                 FP32_INTERPRETER)


def test_image_input_program_gets_the_pixels_back(converted, tmp_path):
    """An image-input program is fed 255 * (x * std + mean), and its own scale, bias and channel gain
    normalise the pixels again: parity covers the image preprocessing."""
    reference = reference_for("conv_small")
    pre = reference.model.preprocessing
    path = converted("conv_small", "fp32", image_input=True, mean=pre.mean, std=pre.std)
    runner = CoreMLProgramRunner(path, mean=pre.mean, std=pre.std)
    assert runner.interface.image_input and runner.interface.artifact_batch == 1
    check_parity("coreml interpreter conv_small fp32 image input", reference.logits, runner(reference.inputs),
                 FP32_INTERPRETER)
    with pytest.raises(PlatformUnsupportedError, match="takes an image: the Core ML interpreter needs the mean and std"):
        CoreMLProgramRunner(path)  # no manifest beside it


# --------------------------------------------------------------------------------------- compression

@pytest.mark.parametrize("compression", ["int8", "uint8-asymmetric", "palettised-4bit", "palettised-6bit-uniform"])
def test_compressed_weights_decompress_as_coremltools_does(compression, converted, tmp_path):
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
    reference = reference_for("conv_small")
    model = ct.models.MLModel(str(converted("conv_small", "fp32")), skip_model_load=True)
    compressed = compress(model, cto.OptimizationConfig(global_config=config))
    compressed.save(str(tmp_path / "compressed.mlpackage"))
    cto.decompress_weights(compressed).save(str(tmp_path / "decompressed.mlpackage"))

    runner = CoreMLProgramRunner(tmp_path / "compressed.mlpackage")
    op_types = {op.type for op in main_operations(runner.program.spec)}
    expected_op = "constexpr_lut_to_dense" if compression.startswith("palettised") else "constexpr_affine_dequantize"
    assert expected_op in op_types
    logits = runner(reference.inputs[:4])
    np.testing.assert_array_equal(logits, CoreMLProgramRunner(tmp_path / "decompressed.mlpackage")(reference.inputs[:4]))
    assert not np.array_equal(logits, CoreMLProgramRunner(converted("conv_small", "fp32"))(reference.inputs[:4]))


# ------------------------------------------------------------------------------------ the check can fail

def test_one_changed_weight_in_the_weight_file_fails_parity(converted, tmp_path):
    reference = reference_for("conv_small")
    package = altered_copy(converted("conv_small", "fp32"), tmp_path)
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
def test_one_changed_attribute_fails_parity(variant, op_type, input_name, altered, converted, tmp_path):
    reference = reference_for(variant)
    package = altered_copy(converted(variant, "fp32"), tmp_path)
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


def test_an_unknown_operation_is_named_with_its_place(converted, tmp_path):
    """`silu` is a real MIL operation that no variant produces, so the interpreter does not implement it."""
    assert "silu" not in supported_operations()
    package = altered_copy(converted("conv_small", "fp32"), tmp_path)
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

def test_the_platforms_runner_for_an_mlpackage(converted):
    """`load` gives Core ML's predict on macOS and the interpreter elsewhere; only predict times Core ML."""
    path = converted("conv_small", "fp32")
    if sys.platform == "darwin":
        assert runner_class(path) is CoreMLPredictRunner and CoreMLPredictRunner.measures_latency
        return
    assert runner_class(path) is CoreMLProgramRunner and not CoreMLProgramRunner.measures_latency
    with pytest.raises(PlatformUnsupportedError, match="Core ML predictions need macOS"):
        CoreMLPredictRunner(path)



def test_export_verify_and_compare_from_the_command_line(tmp_path):
    """`mnv4 export --format coreml` verifies in the platform's runner and `mnv4 verify` re-runs it; the
    predict-vs-interpreter comparison needs Core ML itself, so off macOS it says so in one line."""
    output = tmp_path / "model.mlpackage"
    result = run_cli("export", "--format", "coreml", "--output", output, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["passed"] is True and parity["tolerance"] == "fp32"
    assert parity["worst"]["rel_err"] <= FP32_INTERPRETER["rel_err"] and parity["worst"]["top1_agreement"] == 1.0

    verified = run_cli("verify", output)
    assert verified.returncode == 0 and "-> PASS" in verified.stderr, verified.stderr
    compared = run_cli("coreml-compare", output)
    if sys.platform == "darwin":
        assert compared.returncode == 0 and "-> PASS" in compared.stdout, compared.stderr
    else:
        assert_one_line_error(compared, "Core ML predictions need macOS")


@pytest.mark.matrix
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_converts_and_runs_at_fp32(variant, converted):
    """All 12 variants: every operation their conversion produces is implemented, with fp32 parity."""
    reference = reference_for(variant)
    runner = CoreMLProgramRunner(converted(variant, "fp32"), threads=2)
    check_parity(f"coreml interpreter {variant} fp32", reference.logits, runner(reference.inputs), FP32_INTERPRETER)
