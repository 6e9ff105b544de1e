"""Timing one callable: warmup, then timed calls until both a count and a duration are reached, and the
summary of the distribution (a latency is a distribution, never one number)."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

MIN_ITERATIONS = 10  # with --min-seconds: never fewer calls than this, however slow each one is


def time_calls(call: Callable[[], object], warmup: int, iterations: int | None, min_seconds: float | None) -> list[float]:
    """Milliseconds per call: `warmup` untimed calls, then exactly `iterations` calls, or (without
    `iterations`) calls until `min_seconds` have passed and at least MIN_ITERATIONS were timed."""
    for _ in range(warmup):
        call()
    times = []
    started = time.perf_counter()
    while True:
        start = time.perf_counter()
        call()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        if iterations is not None:
            if len(times) >= iterations:
                return times
        elif len(times) >= MIN_ITERATIONS and end - started >= (min_seconds or 0.0):
            return times


def median_of_process_means(times_per_process: list[list[float]]) -> float:
    """The MobileNetV4 paper's latency: each process's mean time, then their median (one process: its mean)."""
    return float(np.median([np.mean(times) for times in times_per_process]))


def summarise(times_ms: list[float]) -> dict:
    values = np.asarray(times_ms, dtype=np.float64)
    p5, median, p95, p99 = np.percentile(values, [5, 50, 95, 99])
    return {"mean": float(values.mean()), "median": float(median), "p5": float(p5), "p95": float(p95),
            "p99": float(p99), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()), "iterations": len(values)}
