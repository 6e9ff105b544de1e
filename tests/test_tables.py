"""The tables every list derives from: precisions, formats and delegates, and export options. Refusals are tested
against the option table itself (every option, every format that does not take it), so a new row is covered
without a new test; what `check` lets through is what the exporters are then asked to do."""
import math

import pytest

from mnv4.artifact.formats import DELEGATES, FORMATS
from mnv4.artifact.options import DEPLOYMENT_TARGETS, OPTIONS, ExportRequest, check
from mnv4.artifact.precisions import (
    ARTIFACT_PRECISIONS,
    CALIBRATED,
    FLOAT16_ARITHMETIC,
    FP16,
    FP32,
    INT8,
    INT8_WEIGHTS,
    LIMITS,
    PRECISIONS,
    limits_for,
)
from mnv4.bench.plan import BenchOptions, plan
from mnv4.bench.results import PRECISION_ORDER
from mnv4.errors import MNV4Error, UnsupportedOptionError

# A value that each option takes where it is taken (options every format takes are not here: --image-input's
# refusals are its rules', tests/test_image_input.py).
GIVEN = {"dynamic_batch": True, "nhwc": True, "int8_io": True, "calibration": "photos",
         "calibration_count": 8, "delegate": "vulkan", "compute_units": "all", "minimum_deployment_target": "iOS17",
         "target_platform": "amd64"}


def targets():
    """Every (format, delegate, precision) a request can name."""
    for fmt, row in FORMATS.items():
        for delegate in row.delegates or (None,):
            for precision in row.precisions_of(DELEGATES.get(delegate)):
                yield fmt, delegate, precision


def request(fmt, delegate, precision, **options):
    return ExportRequest("conv_small", precision=precision, **({"delegate": delegate} if delegate else {}), **options)


@pytest.fixture
def qnn_sdk(tmp_path, monkeypatch):
    """A folder that passes for QNN's SDK, so that QNN's rows are checked like the others."""
    variable, library = DELEGATES["qnn"].sdk
    (tmp_path / library).parent.mkdir(parents=True)
    (tmp_path / library).write_bytes(b"")
    monkeypatch.setenv(variable, str(tmp_path))


@pytest.mark.parametrize("name", sorted(GIVEN))
def test_every_option_is_refused_exactly_where_its_row_says(name, qnn_sdk):
    """For every target: refused in one line naming the flag and who takes it where the row does not take it;
    accepted (as far as this option goes) where it does."""
    option = OPTIONS[name]
    cases = [(fmt, "vulkan", FP32.name) for fmt in FORMATS] if name == "delegate" else targets()
    outcomes = set()
    for fmt, delegate, precision in cases:
        taken = (not option.takers or any(t.takes(fmt, DELEGATES.get(delegate), precision) for t in option.takers)) \
            and (not option.precisions or precision in option.precisions)
        given = {} if name == "delegate" else {name: GIVEN[name]}
        try:
            check(fmt, request(fmt, delegate, precision, **given))
        except UnsupportedOptionError as error:
            assert not taken, f"{option.flag} refused for {fmt} {delegate} {precision}: {error}"
            assert str(error).startswith(f"{option.flag} is for ") and "\n" not in str(error)
            outcomes.add("refused")
            continue
        assert taken, f"{option.flag} accepted for {fmt} {delegate} {precision}"
        outcomes.add("accepted")
    assert outcomes == {"refused", "accepted"}


def test_refusals_name_the_target_and_what_to_do():
    with pytest.raises(UnsupportedOptionError) as raised:
        check("executorch", request("executorch", None, INT8.name, dynamic_batch=True))
    message = str(raised.value)
    assert "not executorch --delegate xnnpack --precision int8" in message and "export a fixed --batch" in message
    with pytest.raises(UnsupportedOptionError, match="--nhwc is for tflite and executorch, not onnx: the other "
                                                     "formats take NCHW"):
        check("onnx", request("onnx", None, FP32.name, nhwc=True))


@pytest.mark.parametrize("fmt, delegate", [(fmt, delegate) for fmt, row in FORMATS.items()
                                           for delegate in row.delegates or (None,)])
def test_precisions_a_format_or_delegate_lacks_are_refused(fmt, delegate, qnn_sdk):
    supported = FORMATS[fmt].precisions_of(DELEGATES.get(delegate))
    for precision in ARTIFACT_PRECISIONS:
        if precision in supported:
            check(fmt, request(fmt, delegate, precision, **({"calibration_count": 8} if precision in CALIBRATED else {})))
            continue
        with pytest.raises(UnsupportedOptionError, match=f"supports precision .*, not '{precision}'"):
            check(fmt, request(fmt, delegate, precision))


@pytest.mark.parametrize("name", [name for name, row in OPTIONS.items() if row.bounds])
def test_values_out_of_bounds_are_refused_nan_too(name):
    low, high = OPTIONS[name].bounds
    fmt = OPTIONS[name].takers[0].format if OPTIONS[name].takers else "tflite"  # a format that takes it
    for value in (low - 1, high + 1, math.nan):
        with pytest.raises(MNV4Error, match=f"{OPTIONS[name].flag} must be from {low:g} to {high:g}"):
            check(fmt, ExportRequest("conv_small", precision=INT8.name, **{name: value}))
    check(fmt, ExportRequest("conv_small", precision=INT8.name, **{name: high}))


@pytest.mark.parametrize("name, value, near", [("precision", "fp61", "fp16"), ("delegate", "vulcan", "vulkan"),
                                               ("compute_units", "cpu_and_gpus", "cpu_and_gpu"),
                                               ("minimum_deployment_target", "ios17", "iOS17")])
def test_a_mistyped_value_gets_the_nearest_one(name, value, near):
    with pytest.raises(MNV4Error) as raised:
        check("coreml" if name != "delegate" else "executorch", ExportRequest("conv_small", **{name: value}))
    assert f"did you mean {near!r}?" in str(raised.value) and "choose one of:" in str(raised.value)


def test_combinations_no_single_row_can_say():
    with pytest.raises(UnsupportedOptionError, match="one image per prediction"):
        check("coreml", ExportRequest("conv_small", image_input=True, dynamic_batch=True))
    with pytest.raises(UnsupportedOptionError, match=r"needs --minimum-deployment-target iOS17 \(macOS14\)"):
        check("coreml", ExportRequest("conv_small", precision=INT8.name, minimum_deployment_target="iOS16"))
    check("coreml", ExportRequest("conv_small", precision=INT8_WEIGHTS.name, minimum_deployment_target="iOS16"))


def test_the_cli_flags_and_help_come_from_the_option_table(cli):
    result = cli("export", "--help")
    assert result.returncode == 0
    for option in OPTIONS.values():
        assert option.flag in result.stdout
    assert "For tflite --precision int8." in " ".join(result.stdout.replace("│", " ").split())
    for precision in ARTIFACT_PRECISIONS:
        assert f"{precision}:" in result.stdout


def test_every_list_of_precisions_derives_from_the_table():
    assert PRECISION_ORDER == tuple(PRECISIONS)
    assert set(ARTIFACT_PRECISIONS) == {name for name, row in PRECISIONS.items() if row.artifact}
    assert CALIBRATED == (INT8.name,)
    for row in FORMATS.values():
        assert set(row.precisions) <= set(ARTIFACT_PRECISIONS)
    for row in DELEGATES.values():
        assert set(row.precisions) <= set(ARTIFACT_PRECISIONS)
    # The bench's PyTorch rows and timm's peers follow the rows' torch_dtype and peer fields.
    rows = plan(BenchOptions(variant="conv_small", formats=("onnx", "torch"), precisions=tuple(PRECISIONS),
                             compare_timm=True))
    assert {(row.source, row.precision) for row in rows if row.format == "onnx"} == {
        ("mnv4", FP32.name), ("mnv4", FP16.name), ("mnv4", INT8.name), ("timm", FP32.name)}
    assert {row.precision for row in rows if row.format == "torch"} == {FP32.name}


def test_limits_follow_the_arithmetic():
    assert limits_for(FP32.name, "float32") is FP32.limits and limits_for(FP16.name, "float32") is FP16.limits
    assert limits_for(FP32.name, "float16") is FLOAT16_ARITHMETIC and limits_for(FP16.name, "float16") is FLOAT16_ARITHMETIC
    assert limits_for(INT8.name, "float16") is INT8.limits  # int8 is judged as int8 whatever its float ops are
    assert set(LIMITS) == {"fp32", "fp16", "fp16-arithmetic", "int8", "int8-weights"}
    assert INT8.limits.photos_only and not FP32.limits.photos_only


def test_deployment_targets_are_ones_coremltools_has():
    import coremltools as ct

    for name, version in DEPLOYMENT_TARGETS.items():
        assert getattr(ct.target, name).value == version
