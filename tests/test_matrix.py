"""The full matrix: every paper variant to every format at every precision it has, each verified in its runtime.

Slow (about an hour on 2 cores): run with `pytest -m matrix`; `scripts/export_matrix.py` prints the table."""
import pytest

from mnv4.artifact.formats import FORMATS
from mnv4.export import ExportRequest, export
from mnv4.model import PAPER_VARIANTS

# XNNPACK's float16 kernels lose more than fp16 storage on conv_large (docs/export.md): a known failure,
# strict so that a fix shows up.
KNOWN_FAILURES = {("conv_large", "executorch", "fp16"): "XNNPACK fp16 cosine 0.9923 < 0.995 on conv_large: "
                                                         "float16 rounding builds up over 24 unscaled residual blocks"}
# float16 weights computed in float32 miss the fp16 limit (2e-2) by a little on the seeded conv_large: rounding its
# weights alone, with float64 arithmetic, gives 0.021 to 0.024 on a photo (docs/export.md). Trained weights pass.
KNOWN_FAILURES |= {("conv_large", fmt, "fp16"): "float16 weights of the seeded conv_large: 0.023 to 0.026 > 0.02 on a "
                   "photo, 0.021 to 0.024 from their rounding alone" for fmt in ("onnx", "tflite", "openvino", "ncnn")}


CASES = [(fmt, precision) for fmt, row in FORMATS.items() for precision in row.precisions]


@pytest.mark.matrix
@pytest.mark.parametrize("fmt, precision", CASES)
@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_export_and_verify(variant, fmt, precision, tmp_path, request):
    if (variant, fmt, precision) in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[variant, fmt, precision]))
    output = tmp_path / f"model{FORMATS[fmt].suffix}"
    manifest = export(fmt, ExportRequest(variant=variant, precision=precision), output)
    assert output.exists() and manifest.bytes > 0
    parity = manifest.parity  # Core ML too: off macOS it runs in the ML-program interpreter
    assert parity["passed"] is True, parity.get("failures", parity.get("status"))
