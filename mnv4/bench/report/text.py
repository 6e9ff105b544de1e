"""Numbers as text for the report's tables and plots: "—" for a value that does not apply or was not measured."""
from __future__ import annotations

import math


def text(value) -> str:
    return "—" if value is None else str(value)


def significant(value: float | None, like: float | None = None) -> str:
    """Three significant digits without exponents (0.0354, 1.23, 12.3, 1234): latencies, rates, megabytes.
    With `like`, as many decimals as `like` gets, so a spread reads in the same units as its median."""
    if value is None:
        return "—"
    reference = value if like is None else like
    if not math.isfinite(reference) or reference == 0:
        return str(value)
    decimals = min(3, max(0, 2 - math.floor(math.log10(abs(reference)))))
    return f"{value:.{decimals}f}"


def fixed(value: float | None, decimals: int) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def scientific(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f}%"


def times(ratio: float | None) -> str:
    """A ratio of two latencies: ours/timm, a speed-up."""
    return "—" if ratio is None else f"{ratio:.2f}×"


def agreement(fraction: float | None) -> str:
    """100% only when every image agrees, so 99.96% never rounds up to a perfect score."""
    if fraction is None:
        return "—"
    return "100%" if fraction == 1 else f"{min(fraction * 100, 99.9):.1f}%"
