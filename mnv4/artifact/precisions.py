"""The one table of precisions. Every list of precisions (the CLI's choices and help, the formats' and delegates'
precisions, the parity limits, calibration, the bench's rows and PyTorch dtypes, timm's peers, the report's order)
derives from `PRECISIONS`; a new precision is one row here plus what each exporter does with it.

The table's order is the report's: from float32 to the most quantized, then PyTorch-only precisions."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """How far an artifact's logits may be from the float64 truth (the rule is `parity.truth_breaches`): relative
    error, lowest cosine, and whether only the photos are judged (random pixels then are recorded, not judged)."""

    name: str  # what records and reports call these limits
    rel_err: float
    cosine: float | None
    photos_only: bool = False

    def as_dict(self) -> dict:
        record = {"rel_err": self.rel_err, "cosine": self.cosine}
        return {**record, "photos_only": True} if self.photos_only else record


# fp32 artifacts differ from PyTorch only by kernel rounding. fp16 artifacts that store float16 weights but compute in
# float32 (ONNX, TFLite) show only the weights' rounding. Float arithmetic in float16 (ExecuTorch XNNPACK, Core ML,
# PyTorch's own fp16/bf16 rows) rounds every activation to 11 bits, and XNNPACK accumulates in float16 too, which
# costs it 2e-2 to 4e-2 relative error and cosine 0.996 to 0.999 on the paper variants where XNNPACK emulates float16
# with F16C, and 8.2e-2 (cosine 0.9971) on conv_small where the CPU has native float16 arithmetic (AVX512-FP16, as
# phones have) (Core ML, interpreted with float32 accumulation: 6e-3 to 1.2e-2); docs/export.md. So its limits are
# looser, and named in every report.
FLOAT16_ARITHMETIC = Limits("fp16-arithmetic", 1e-1, 0.995)
# int8 rounds every weight and activation to 256 levels. On untrained (seeded) weights the logits are so sensitive
# that 10 % noise on ONE layer's weights already gives cosine 0.90 (int8 artifacts of them: 0.87 to 0.93 on the
# photos), so these limits only tell a broken artifact from a quantized one (a wrong model: cosine -0.03, one layer's
# channels reversed: 0.41): whether int8 still classifies is judged by the trained fixture's held-out accuracy
# (parity.MAX_TOP1_LOSS_POINTS), as the reports say (docs/export.md). They are judged on the photos alone: random
# pixels lie outside any calibration set, where int8 clips by design (ExecuTorch int8 of the seeded conv_small:
# cosine 0.80 on one); their numbers are recorded.
INT8_LIMITS = Limits("int8", 1.0, 0.8, photos_only=True)
INT8_WEIGHTS_LIMITS = Limits("int8-weights", 0.5, 0.9, photos_only=True)
# Float dtypes whose arithmetic is float16's or coarser.
_HALF_DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True)
class Precision:
    name: str  # what users type: --precision int8
    summary: str  # what the CLI's help says of it
    weights_dtype: str  # how the artifact stores its weights
    compute_dtype: str  # what it computes in where its format does not say otherwise (facts record the truth)
    limits: Limits  # its parity limits while its arithmetic is not float16's (see `limits_for`)
    calibrated: bool = False  # its export needs calibration images (int8 activation ranges)
    torch_dtype: str | None = None  # the dtype of the bench's PyTorch rows at it; None: no PyTorch row
    artifact: bool = True  # exported to the formats (bf16 is PyTorch's alone, on CUDA)
    peer: bool = False  # timm's model is exported at it too (--compare-timm): what a user exports by default

    @property
    def quantized(self) -> bool:
        return self.weights_dtype == "int8"

    def limits_for(self, compute_dtype: str | None) -> Limits:
        """The limits of an artifact of this precision that computes in `compute_dtype` (its own, or a runtime's
        forced float16, `mnv4 verify --xnnpack-fp16`): float16 arithmetic has looser limits than float storage."""
        return FLOAT16_ARITHMETIC if not self.quantized and compute_dtype in _HALF_DTYPES else self.limits


FP32 = Precision("fp32", "float32 weights and arithmetic", "float32", "float32", Limits("fp32", 1e-4, None),
                 torch_dtype="float32", peer=True)
FP16 = Precision("fp16", "float16 weights (float16 arithmetic where the format has it)", "float16", "float32",
                 Limits("fp16", 2e-2, 0.999), torch_dtype="float16")
INT8_WEIGHTS = Precision("int8-weights", "int8 weights, float activations (weight-only, dynamic range)", "int8",
                         "float32", INT8_WEIGHTS_LIMITS)
INT8 = Precision("int8", "int8 weights and activations, calibrated on images (static)", "int8", "int8", INT8_LIMITS,
                 calibrated=True)
BF16 = Precision("bf16", "bfloat16 (PyTorch on CUDA only)", "bfloat16", "bfloat16", FLOAT16_ARITHMETIC,
                 torch_dtype="bfloat16", artifact=False)

PRECISIONS: dict[str, Precision] = {row.name: row for row in (FP32, FP16, INT8_WEIGHTS, INT8, BF16)}
# The precisions of artifacts, in report order.
ARTIFACT_PRECISIONS = tuple(name for name, row in PRECISIONS.items() if row.artifact)
CALIBRATED = tuple(name for name, row in PRECISIONS.items() if row.calibrated)
# Every limits a record can name, by name.
LIMITS: dict[str, Limits] = {limits.name: limits for limits in
                             (*(row.limits for row in PRECISIONS.values()), FLOAT16_ARITHMETIC)}


def limits_for(precision: str, compute_dtype: str | None) -> Limits:
    """The limits an artifact of `precision` computing in `compute_dtype` is held to."""
    return PRECISIONS[precision].limits_for(compute_dtype)
