"""The report's plots: matplotlib's object API with its default Agg canvas (no pyplot state, no display needed).

matplotlib is imported only when a figure is drawn, so the Markdown report needs none."""
from __future__ import annotations

import math

from ...artifact.formats import FORMATS, TORCH, TORCH_COLOR
from ...artifact.precisions import LIMITS
from .text import significant

FORMAT_COLORS = {**{name: row.color for name, row in FORMATS.items()}, TORCH: TORCH_COLOR}
MACHINE_MARKERS = "os^Dv<>p"
ZERO_ERROR = 1e-9  # where a relative error of exactly 0 is drawn on the log axis


def smallest_batch(rows: list[dict]) -> list[dict]:
    """The rows at batch 1, or the smallest batch measured: per-image latency, comparable across runtimes."""
    batch = min(row["batch"] for row in rows)
    return [row for row in rows if row["batch"] == batch]


def _short_label(row: dict) -> str:
    runtime = row["runtime"] if row["runtime"].startswith(row["format"]) else f"{row['format']}/{row['runtime']}"
    where = "cuda" if row["threads"] is None else f"{row['threads']} thr"
    return f"{row['source']} {runtime} {row['precision']} {where}"


def _new_figure(height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(8, height), layout="constrained")


def latency_figure(rows: list[dict], machine: str, variant: str):
    from matplotlib.patches import Patch

    figure = _new_figure(1.6 + 0.3 * len(rows))
    axes = figure.add_subplot()
    for y, row in enumerate(rows):
        latency = row["latency_ms"]
        color = FORMAT_COLORS.get(row["format"], "#444444")
        timm = row["source"] == "timm"
        failed = row["status"] == "parity-failed"
        axes.barh(y, latency["median"], color="white" if timm else color, hatch="///" if timm else None,
                  edgecolor="#cf222e" if failed else color, linewidth=2 if failed else 1)
        whiskers = [[max(latency["median"] - latency["p5"], 0)], [max(latency["p95"] - latency["median"], 0)]]
        axes.errorbar(latency["median"], y, xerr=whiskers, fmt="none", ecolor="black", capsize=3, linewidth=1)
        axes.annotate(f" {significant(latency['median'])}", (latency["p95"], y), va="center", fontsize=8)
    axes.set_yticks(range(len(rows)),
                    [_short_label(row) + (" (parity failed)" if row["status"] == "parity-failed" else "")
                     for row in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, max(row["latency_ms"]["p95"] for row in rows) * 1.15)
    axes.set_xlabel("median latency per call (ms); whiskers: p5–p95")
    axes.set_title(f"{variant} on {machine}, batch {rows[0]['batch']}")
    formats = list(dict.fromkeys(row["format"] for row in rows))
    handles = [Patch(color=FORMAT_COLORS.get(name, "#444444"), label=name) for name in formats]
    if any(row["source"] == "timm" for row in rows):
        handles.append(Patch(facecolor="white", edgecolor="#444444", hatch="///", label="timm"))
    axes.legend(handles=handles, fontsize=8, loc="best")
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    return figure


def parity_figure(rows: list[dict], variant: str, several_machines: bool):
    from matplotlib.lines import Line2D

    figure = _new_figure(4.5)
    axes = figure.add_subplot()
    machines = list(dict.fromkeys(row["machine"] for row in rows))
    for row in rows:
        color = FORMAT_COLORS.get(row["format"], "#444444")
        marker = MACHINE_MARKERS[machines.index(row["machine"]) % len(MACHINE_MARKERS)]
        error = row["parity"]["rel_err"]
        if not math.isfinite(error):
            continue
        axes.scatter(max(error, ZERO_ERROR), row["latency_ms"]["median"], marker=marker, s=45, edgecolors=color,
                     facecolors="none" if row["source"] == "timm" else color, linewidths=1.5)
    for tolerance in dict.fromkeys(row["parity"]["tolerance"] for row in rows):
        limit = LIMITS[tolerance].rel_err if tolerance in LIMITS else None
        if limit is not None:
            axes.axvline(limit, color="#888888", linestyle="--", linewidth=1)
            axes.annotate(f"{tolerance} limit", (limit, 1), xycoords=("data", "axes fraction"), rotation=90,
                          va="top", ha="right", fontsize=8, color="#555555")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("relative error of logits vs PyTorch fp32 (max |Δ| / max |reference|, log scale)")
    axes.set_ylabel("median latency (ms)")
    axes.set_title(f"{variant}: latency against parity error")
    handles = [Line2D([], [], marker="o", linestyle="none", color=FORMAT_COLORS.get(name, "#444444"), label=name)
               for name in dict.fromkeys(row["format"] for row in rows)]
    handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", color="#444444",
                          label="timm (hollow)"))
    if several_machines:
        handles += [Line2D([], [], marker=MACHINE_MARKERS[index % len(MACHINE_MARKERS)], linestyle="none",
                           color="#444444", label=machine) for index, machine in enumerate(machines)]
    axes.legend(handles=handles, fontsize=8, loc="best")
    axes.grid(alpha=0.3)
    return figure


def cuda_sweeps(rows: list[dict]) -> dict[tuple, list[dict]]:
    """CUDA rows with a throughput, one line per configuration that was measured at two or more batch sizes."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["device"] == "cuda" and row["throughput_ips"] is not None:
            key = (row["machine"], row["source"], row["format"], row["runtime"], row["precision"])
            groups.setdefault(key, []).append(row)
    return {key: sorted(group, key=lambda row: row["batch"]) for key, group in groups.items() if len(group) > 1}


def throughput_figure(sweeps: dict[tuple, list[dict]], variant: str, several_machines: bool):
    figure = _new_figure(4.5)
    axes = figure.add_subplot()
    batches = sorted({row["batch"] for group in sweeps.values() for row in group})
    # One color per configuration, shared by mnv4 (solid) and its timm twin (dashed), so pairs read together.
    configurations = list(dict.fromkeys(key[:1] + key[2:] for key in sweeps))
    for (machine, source, fmt, runtime, precision), group in sweeps.items():
        label = f"{machine}: " if several_machines else ""
        color = f"C{configurations.index((machine, fmt, runtime, precision)) % 10}"
        axes.plot([row["batch"] for row in group], [row["throughput_ips"] for row in group], marker="o",
                  color=color, linestyle="--" if source == "timm" else "-",
                  label=f"{label}{source} {runtime} {precision}")
    axes.set_xscale("log", base=2)
    axes.set_xticks(batches, [str(batch) for batch in batches])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("batch size (images per call)")
    axes.set_ylabel("throughput (images/s)")
    axes.set_title(f"{variant}: GPU throughput against batch")
    axes.legend(fontsize=8, loc="best")
    axes.grid(alpha=0.3)
    return figure

