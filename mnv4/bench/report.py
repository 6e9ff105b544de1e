"""report.md and report.html from one or more results.json files (one per machine).

Both documents come from one list of blocks (headings, paragraphs, tables, figures), so the Markdown and the HTML
always show the same numbers; only the HTML carries the plots, embedded as PNG data so the page is one file."""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..errors import MissingExtraError
from ..artifact.formats import FORMATS, TORCH, TORCH_COLOR
from ..artifact.parity import THRESHOLDS
from .results import load_results, machine_labels, summary_rows

FORMAT_COLORS = {**{name: row.color for name, row in FORMATS.items()}, TORCH: TORCH_COLOR}
MACHINE_MARKERS = "os^Dv<>p"
ZERO_ERROR = 1e-9  # where a relative error of exactly 0 is drawn on the log axis
DPI = 144  # 1.5x pixels for sharp plots on high-density screens; shown at the figure's size in CSS pixels

HOW_TO_READ = (
    ("Each row is one configuration: model source (mnv4 = this package, timm = the timm model exported the same way, "
    "for comparison), format, runtime, device, precision, CPU threads and batch size. Latency is wall-clock time "
    "per call in milliseconds after warm-up: median with the 5th–95th percentile range, mean ± standard deviation "
    "and 99th percentile over “iters” timed calls. Load is the time to load the artifact; first inference is the "
    "first call after loading. Throughput = batch × 1000 / median (images/s). GFLOP/s = 2 × MACs × batch / median; "
    "% of peak divides it by the machine's measured fp32 FMA peak per thread × threads. ours/timm = our median / "
    "timm's median for the same configuration (below 1: ours is faster)."),
    ("Parity compares the logits with the PyTorch reference (eager, fp32) on the same real photos and random images: "
    "rel err = max |Δ| / max |reference|, cosine = the lowest per-image cosine similarity, top-1/top-5 = share of "
    "images whose top class / set of top 5 classes agree; the tolerance names the limits that apply "
    "(docs/export.md)."),
    ("Status: ok = measured, parity within its limits; parity-failed = measured, parity outside its limits; failed = "
    "the export or run raised; unavailable = the runtime is not installed or not available on this platform; "
    "latency-not-measured = parity measured, latency not representative here. Every row that is not ok is listed "
    "with its reason under “Rows that are not ok”."),
)


# How each kind of block of `_document` is written in each output; the plots themselves are in report.html only.
MARKDOWN_BLOCKS = {
    "heading": lambda level, text: f"{'#' * level} {text}",
    "paragraph": lambda text: text,
    "code": lambda text: f"```\n{text}\n```",
    "table": lambda columns, rows: _markdown_table(columns, rows),
    "figure": lambda make_figure, caption: f"*Plot in report.html: {caption}*" if make_figure else f"*{caption}*",
}
HTML_BLOCKS = {
    "heading": lambda level, text: f"<h{level}>{html.escape(text)}</h{level}>",
    "paragraph": lambda text: f"<p>{html.escape(text)}</p>",
    "code": lambda text: f"<pre>{html.escape(text)}</pre>",
    "table": lambda columns, rows: _html_table(columns, rows),
    "figure": lambda make_figure, caption: _html_figure(make_figure, caption),
}


def _render(results_list: list[dict], writers: dict) -> list[str]:
    return [writers[kind](*arguments) for kind, *arguments in _document(results_list)]


def render_markdown(results_list: list[dict]) -> str:
    return "\n\n".join(_render(results_list, MARKDOWN_BLOCKS)) + "\n"


def render_html(results_list: list[dict]) -> str:
    body = _render(results_list, HTML_BLOCKS)
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(_title(results_list))}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def write_report(results_list: list[dict], output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown, page = render_markdown(results_list), render_html(results_list)  # both, or neither file
    md_path, html_path = output_dir / "report.md", output_dir / "report.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


def merge(paths: list[str | Path], output_dir: str | Path) -> tuple[Path, Path]:
    """`mnv4 report A.json B.json --output-dir DIR`: one report over several machines' results."""
    results_list = [load_results(path) for path in paths]
    summary_rows(results_list, [str(path) for path in paths])  # refuses rows measured twice, naming the file
    return write_report(results_list, output_dir)


# ----------------------------------------------------------------------------------------------------------------
# The document


def _title(results_list: list[dict]) -> str:
    variants = list(dict.fromkeys(results["model"]["variant"] for results in results_list))
    return f"MobileNetV4 benchmark: {', '.join(variants)}"


def _document(results_list: list[dict]) -> list[tuple]:
    labels = machine_labels(results_list)
    rows = summary_rows(results_list)
    several_machines = len(set(labels)) > 1
    machines = ", ".join(dict.fromkeys(labels))
    blocks = [
        ("heading", 1, _title(results_list)),
        ("paragraph", f"{len(results_list)} results file(s) from {machines}."),
        ("heading", 2, "How to read this report"),
        *[("paragraph", text) for text in HOW_TO_READ],
        ("heading", 2, "Machines"),
        _machines_table(results_list, labels),
        ("heading", 2, "Runs"),
    ]
    for results, label in zip(results_list, labels):
        blocks.append(("heading", 3, f"{label}: {results['model']['variant']}, created {results['created']}"))
        blocks.append(("code", _run_text(results["options"])))

    models = {}
    for results in results_list:
        models.setdefault((results["model"]["variant"], results["model"]["resolution"]), results["model"])
    for (variant, resolution), model in models.items():
        model_rows = [row for row in rows if (row["variant"], row["resolution"]) == (variant, resolution)]
        blocks += _model_section(model, model_rows, several_machines)
    return blocks


def _machines_table(results_list: list[dict], labels: list[str]) -> tuple:
    columns = [("machine", False), ("variant", False), ("created", False), ("CPU", False),
               ("cores (physical/logical)", False), ("ISA", False), ("memory GB", True), ("GPU", False),
               ("FMA peak GFLOP/s per thread", True), ("OS", False), ("Python", False), ("versions", False)]
    cells = []
    for results, label in zip(results_list, labels):
        machine = results["machine"]
        versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items() if version)
        cells.append([label, results["model"]["variant"], results["created"], machine["cpu_model"],
                      f"{_text(machine['physical_cores'])}/{machine['logical_cores']}", " ".join(machine["isa"]),
                      _fixed(machine["memory_gb"], 1), _text(machine["gpu"]),
                      _significant(machine["fma_peak_gflops_per_thread"]), machine["os"], machine["python"],
                      versions])
    return ("table", columns, cells)


def _run_text(options: dict) -> str:
    """The exact command (when the runner recorded it) and every option, one per line."""
    lines = [f"$ {options['command']}"] if options.get("command") else []
    for key, value in options.items():
        if key != "command":
            shown = ", ".join(map(str, value)) if isinstance(value, list) else _text(value)
            lines.append(f"{key}: {shown}")
    return "\n".join(lines)


def _model_section(model: dict, rows: list[dict], several_machines: bool) -> list[tuple]:
    identity = _identity_columns(several_machines)
    timed = [row for row in rows if row["latency_ms"] is not None]
    # The plots show per-image latency: each machine's batch-1 rows (or its smallest batch).
    smallest = {machine: _smallest_batch([row for row in timed if row["machine"] == machine])
                for machine in dict.fromkeys(row["machine"] for row in timed)}
    verified = [row for row in rows if row["parity"] is not None or row["artifact_bytes"] is not None]
    not_ok = [row for row in rows if row["status"] != "ok"]
    title = (f"{model['variant']} at {model['resolution']} px: {model['params'] / 1e6:.2f} M parameters, "
             f"{model['macs'] / 1e9:.3f} GMACs per image")
    blocks = [("heading", 2, title), ("heading", 3, "Latency")]
    if timed:
        blocks.append(("table", identity + LATENCY_COLUMNS, [_cells(row, several_machines, _latency_cells)
                                                             for row in timed]))
        for machine, batch_rows in smallest.items():
            blocks.append(("figure", lambda r=batch_rows, m=machine: _latency_figure(r, m, model["variant"]),
                           f"Median latency with p5–p95 whiskers on {machine}, batch {batch_rows[0]['batch']}."))
    else:
        blocks.append(("paragraph", "No row has a latency measurement."))

    blocks.append(("heading", 3, "Parity and artifacts"))
    if verified:
        blocks.append(("table", identity + PARITY_COLUMNS, [_cells(row, several_machines, _parity_cells)
                                                            for row in verified]))
    else:
        blocks.append(("paragraph", "No row has a parity measurement or an artifact."))
    both = [row for batch_rows in smallest.values() for row in batch_rows if row["parity"] is not None]
    if both:
        blocks.append(("figure", lambda: _parity_figure(both, model["variant"], several_machines),
                       ("Median latency against relative error (smallest batch per machine); dashed lines are the "
                       f"rel-err limits; an error of exactly 0 is drawn at {ZERO_ERROR:g}.")))

    sweeps = _cuda_sweeps(timed)
    blocks.append(("heading", 3, "Throughput against batch (CUDA)"))
    if sweeps:
        blocks.append(("figure", lambda: _throughput_figure(sweeps, model["variant"], several_machines),
                       "Images per second against batch size on the GPU."))
    else:
        blocks.append(("figure", None, ("No throughput-against-batch plot: these results have no CUDA rows "
                                       "measured at more than one batch size.")))

    blocks.append(("heading", 3, "Rows that are not ok"))
    if not_ok:
        columns = identity + [("reason", False)]
        blocks.append(("table", columns, [_cells(row, several_machines, lambda r: [r["reason"]]) for row in not_ok]))
    else:
        blocks.append(("paragraph", "Every row is ok."))
    return blocks


def _identity_columns(several_machines: bool) -> list[tuple[str, bool]]:
    columns = [("source", False), ("format", False), ("runtime", False), ("device", False), ("precision", False),
               ("threads", True), ("batch", True), ("status", False)]
    return [("machine", False)] + columns if several_machines else columns


def _cells(row: dict, several_machines: bool, detail) -> list[str]:
    cells = [row["source"], row["format"], row["runtime"], row["device"], row["precision"], _text(row["threads"]),
             str(row["batch"]), row["status"]]
    return ([row["machine"]] if several_machines else []) + cells + detail(row)


LATENCY_COLUMNS = [("median ms (p5–p95)", True), ("mean ± std ms", True), ("p99 ms", True), ("iters", True),
                   ("load ms", True), ("first inference ms", True), ("throughput img/s", True),
                   ("peak RSS MB", True), ("GFLOP/s", True), ("% of peak", True), ("ours/timm", True)]


def _latency_cells(row: dict) -> list[str]:
    latency = row["latency_ms"]
    ratio = row["ratio_vs_timm"]
    median, mean = latency["median"], latency["mean"]
    return [f"{_significant(median)} ({_significant(latency['p5'], median)}–{_significant(latency['p95'], median)})",
            f"{_significant(mean)} ± {_significant(latency['std'], mean)}", _significant(latency["p99"], median),
            str(latency["iterations"]), _significant(row["load_ms"]), _significant(row["first_inference_ms"]),
            _significant(row["throughput_ips"]), _significant(row["peak_rss_mb"]), _significant(row["gflops"]),
            _percent(row["peak_fraction"]), "—" if ratio is None else f"{ratio:.2f}×"]


PARITY_COLUMNS = [("rel err", True), ("cosine", True), ("top-1", True), ("top-5", True), ("max |Δ|", True),
                  ("tolerance", False), ("size MB", True), ("export s", True)]


def _parity_cells(row: dict) -> list[str]:
    parity = row["parity"] or {}
    size = row["artifact_bytes"]
    return [_scientific(parity.get("rel_err")), _fixed(parity.get("cosine"), 6),
            _agreement(parity.get("top1_agreement")), _agreement(parity.get("top5_agreement")),
            _scientific(parity.get("max_abs")), _text(parity.get("tolerance")),
            "—" if size is None else f"{size / 1e6:.2f}", _fixed(row["export_seconds"], 1)]


# ----------------------------------------------------------------------------------------------------------------
# Numbers as text: "—" for a value that does not apply or was not measured


def _text(value) -> str:
    return "—" if value is None else str(value)


def _significant(value: float | None, like: float | None = None) -> str:
    """Three significant digits without exponents (0.0354, 1.23, 12.3, 1234): latencies, rates, megabytes.
    With `like`, as many decimals as `like` gets, so a spread reads in the same units as its median."""
    if value is None:
        return "—"
    reference = value if like is None else like
    if not math.isfinite(reference) or reference == 0:
        return str(value)
    decimals = min(3, max(0, 2 - math.floor(math.log10(abs(reference)))))
    return f"{value:.{decimals}f}"


def _fixed(value: float | None, decimals: int) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def _scientific(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f}%"


def _agreement(fraction: float | None) -> str:
    """100% only when every image agrees, so 99.96% never rounds up to a perfect score."""
    if fraction is None:
        return "—"
    return "100%" if fraction == 1 else f"{min(fraction * 100, 99.9):.1f}%"


def _markdown_table(columns: list[tuple[str, bool]], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    rule = "|" + "|".join("---:" if numeric else "---" for _, numeric in columns) + "|"
    return "\n".join([line([header for header, _ in columns]), rule] + [line(row) for row in rows])


def _html_table(columns: list[tuple[str, bool]], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
    body = []
    for row in rows:
        cells = []
        for (header, numeric), cell in zip(columns, row):
            classes = "num" if numeric else f"status {cell}" if header == "status" else ""
            attribute = f' class="{classes}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>")


def _html_figure(make_figure, caption: str) -> str:
    if make_figure is None:
        return f'<p class="note">{html.escape(caption)}</p>'
    try:
        import matplotlib  # noqa: F401  (an optional extra: say which, rather than a traceback)
    except ImportError:
        raise MissingExtraError("matplotlib", "bench") from None
    figure = make_figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    width = round(figure.get_figwidth() * 96)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; }
main { max-width: 1400px; margin: 0 auto; padding: 1.5em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
p { max-width: 75em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
.scroll { overflow-x: auto; margin: .8em 0; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: .25em .5em; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
td.status { font-weight: 600; }
td.ok { color: #1a7f37; } td.parity-failed, td.failed { color: #cf222e; }
td.unavailable { color: #6e7781; } td.latency-not-measured { color: #9a6700; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-style: italic; }
"""


# ----------------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with its default Agg canvas: no pyplot state, no display needed)


def _smallest_batch(rows: list[dict]) -> list[dict]:
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


def _latency_figure(rows: list[dict], machine: str, variant: str):
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
        axes.annotate(f" {_significant(latency['median'])}", (latency["p95"], y), va="center", fontsize=8)
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


def _parity_figure(rows: list[dict], variant: str, several_machines: bool):
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
        limit = THRESHOLDS.get(tolerance, {}).get("rel_err")
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


def _cuda_sweeps(rows: list[dict]) -> dict[tuple, list[dict]]:
    """CUDA rows with a throughput, one line per configuration that was measured at two or more batch sizes."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["device"] == "cuda" and row["throughput_ips"] is not None:
            key = (row["machine"], row["source"], row["format"], row["runtime"], row["precision"])
            groups.setdefault(key, []).append(row)
    return {key: sorted(group, key=lambda row: row["batch"]) for key, group in groups.items() if len(group) > 1}


def _throughput_figure(sweeps: dict[tuple, list[dict]], variant: str, several_machines: bool):
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

