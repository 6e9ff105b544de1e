"""The report as one list of blocks, built from the results: ("heading", level, text), ("paragraph", text),
("code", text), ("table", columns, rows of cells) and ("figure", make_figure or None, caption). `render` writes the
same blocks as Markdown and as HTML."""
from __future__ import annotations

from ...artifact.formats import TORCH
from ...artifact.precisions import FP32, INT8
from ..plan import TORCH_RUNTIMES
from ..results import (
    DEVICE_ORDER,
    LATENCY_PROTOCOLS,
    LATENCY_STATISTICS,
    PRECISION_ORDER,
    describe_row,
    latency_protocol,
    machine_labels,
    summary_rows,
)
from .plots import ZERO_ERROR, cuda_sweeps, latency_figure, parity_figure, smallest_batch, throughput_figure
from .text import agreement, fixed, percent, scientific, significant, text, times

HEADLINE = ("Per machine, the fastest mnv4 row of each format and device (most images per second) among the rows "
            "timed within parity; “vs torch eager fp32” = PyTorch eager fp32's median at the same device, threads and "
            "batch / this median (above 1: faster than PyTorch). Then the fastest mnv4 row of each precision per device and "
            "thread count, with “vs own fp32” = the same format and runtime's fp32 median / this median, the int8 "
            "speed-ups over fp32 per runtime, the parity verdicts and ours/timm.")

EMULATED_NOTE = ("Rows marked (emulated) ran on a software device here (a GPU emulated by Mesa's lavapipe or SwiftShader, "
                 "or headless Chromium): their numbers are the real kernels', their latency is not representative of "
                 "any device.")

HOW_TO_READ = (
    ("Each row is one configuration: model source (mnv4 = this package, timm = the timm model exported the same way, "
    "for comparison), format, runtime, device, precision, CPU threads and batch size. Latency is wall-clock time "
    "per call in milliseconds after warm-up: median with the 5th–95th percentile range, mean ± standard deviation "
    "and 99th percentile over “iters” timed calls. Load is the time to load the artifact; first inference is the "
    "first call after loading. Throughput = batch × 1000 / median (images/s). GFLOP/s = 2 × MACs × batch / median; "
    "% of peak divides it by the machine's measured fp32 FMA peak per thread × threads. vs fp32 = the same "
    "format's fp32 median in the same run (same runtime, threads and batch) / this median: the speed-up of "
    "reduced precision (above 1: faster). ours/timm = our median / "
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


def title(results_list: list[dict]) -> str:
    variants = list(dict.fromkeys(results["model"]["variant"] for results in results_list))
    return f"MobileNetV4 benchmark: {', '.join(variants)}"


def document(results_list: list[dict]) -> list[tuple]:
    labels = machine_labels(results_list)
    protocol = latency_protocol(results_list)
    statistic = LATENCY_STATISTICS[protocol]
    # "ms": the latency every table and the headline read, the --latency protocol's statistic.
    rows = [{**row, "ms": row["latency_ms"][statistic] if row["latency_ms"] else None}
            for row in summary_rows(results_list)]
    several_machines = len(set(labels)) > 1
    machines = ", ".join(dict.fromkeys(labels))
    models = {}
    for results in results_list:
        models.setdefault((results["model"]["variant"], results["model"]["resolution"]), results["model"])
    rows_by_model = {key: [row for row in rows if (row["variant"], row["resolution"]) == key] for key in models}
    blocks = [
        ("heading", 1, title(results_list)),
        ("paragraph", f"{len(results_list)} results file(s) from {machines}."),
        *_emulation_notes(results_list, labels),
        *_headline(rows_by_model, protocol),
        ("heading", 2, "How to read this report"),
        *[("paragraph", paragraph) for paragraph in HOW_TO_READ],
        ("heading", 2, "Machines"),
        _machines_table(results_list, labels),
        ("heading", 2, "Runs"),
    ]
    for results, label in zip(results_list, labels):
        blocks.append(("heading", 3, f"{label}: {results['model']['variant']}, created {results['created']}"))
        blocks.append(("code", _run_text(results["options"])))
    for key, model in models.items():
        blocks += _model_section(model, rows_by_model[key], several_machines, protocol)
    return blocks


# ----------------------------------------------------------------------------------------------------------------
# The headline: what a reader wants first, before how to read the rest


HEADLINE_COLUMNS = [("format", False), ("device", False), ("runtime", False), ("precision", False), ("threads", True),
                    ("batch", True), ("median ms", True), ("img/s", True), ("vs torch eager fp32", True),
                    ("ours/timm", True)]


def _headline(rows_by_model: dict[tuple, list[dict]], protocol: str) -> list[tuple]:
    blocks = [("heading", 2, "Headline"), ("paragraph", HEADLINE),
              ("paragraph", f"Latency protocol: {LATENCY_PROTOCOLS[protocol]}.")]
    for (variant, resolution), rows in rows_by_model.items():
        for machine in dict.fromkeys(row["machine"] for row in rows):
            # Machine first: a heading starting with the variant would read as that variant's own section.
            blocks.append(("heading", 3, f"{machine}: {variant} at {resolution} px"))
            blocks += _machine_headline([row for row in rows if row["machine"] == machine])
    return blocks


def _machine_headline(rows: list[dict]) -> list[tuple]:
    ours = [row for row in rows if row["source"] == "mnv4"]
    fastest = _fastest(ours, ("device", "format"))
    blocks = [_fastest_table(fastest, ours) if fastest else ("paragraph", "No mnv4 row is timed within parity.")]
    if fastest:
        blocks += [_precision_table(ours), *_int8_speedups(ours)]
    not_timed = {}
    for row in ours:
        if (row["device"], row["format"]) not in fastest and not row.get("emulated"):
            not_timed.setdefault(f"{row['format']} on {row['device']}", {})[row["status"]] = None
    if not_timed:
        blocks.append(("paragraph", "Not timed within parity: " + "; ".join(
            f"{where} ({', '.join(statuses)})" for where, statuses in not_timed.items()) + "."))
    blocks.append(("paragraph", _parity_verdict(rows)))
    blocks += _emulated_verdicts(ours)
    # Emulated rows' ratios are left out, as from the fastest rows: a software device's speed is no device's.
    ratios = [row["ratio_vs_timm"] for row in rows if row["ratio_vs_timm"] is not None and not row.get("emulated")]
    if ratios:
        blocks.append(("paragraph", f"ours/timm: {_spread(ratios)} over {len(ratios)} configuration(s) (below 1: ours "
                                    "is faster)."))
    return blocks


def _spread(values: list[float]) -> str:
    return times(values[0]) if len(values) == 1 else f"{times(min(values))} to {times(max(values))}"


def _fastest(rows: list[dict], fields: tuple[str, ...]) -> dict[tuple, dict]:
    """The values of `fields` -> their ok row with the least time per image (not per call, so that a larger batch
    counts by the images it serves), in report order; emulated rows never, their speed is no device's."""
    fastest = {}
    for row in rows:
        key = tuple(row[field] for field in fields)
        if row["status"] == "ok" and not row.get("emulated") and \
                (key not in fastest or _ms_per_image(row) < _ms_per_image(fastest[key])):
            fastest[key] = row
    return fastest


def _emulated_verdicts(rows: list[dict]) -> list[tuple]:
    """The verdicts of the runtimes that ran on software devices (a mobile GPU delegate, browsers): never among the
    fastest, since their speed is not a device's."""
    emulated = [row for row in rows if row.get("emulated")]
    if not emulated:
        return []
    verdicts = [f"{row['format']}/{row['runtime']} {row['precision']}: "
                + (row["status"] if row["parity"] is None else "PASS" if row["parity"]["passed"] else "FAIL")
                + (f" ({row['parity']['known_issue']})" if (row["parity"] or {}).get("known_issue") else "")
                for row in emulated]
    return [("paragraph", f"{EMULATED_NOTE} Their verdicts: {'; '.join(verdicts)}.")]


def _ms_per_image(row: dict) -> float:
    return row["ms"] / row["batch"]


def _fastest_table(fastest: dict[tuple, dict], rows: list[dict]) -> tuple:
    eager_medians = {(row["device"], row["threads"], row["batch"]): row["ms"] for row in rows
                     if (row["format"], row["runtime"], row["precision"]) == (TORCH, TORCH_RUNTIMES["eager"], FP32.name)
                     and row["latency_ms"] is not None}
    cells = []
    for row in fastest.values():
        eager = eager_medians.get((row["device"], row["threads"], row["batch"]))
        median = row["ms"]
        cells.append([row["format"], row["device"], row["runtime"], row["precision"], text(row["threads"]),
                      str(row["batch"]), significant(median), significant(row["throughput_ips"]),
                      times(eager / median if eager else None), times(row["ratio_vs_timm"])])
    return ("table", HEADLINE_COLUMNS, cells)


PRECISION_COLUMNS = [("device", False), ("threads", True), ("precision", False), ("format", False), ("runtime", False),
                     ("batch", True), ("median ms", True), ("img/s", True), ("vs own fp32", True)]


def _precision_table(rows: list[dict]) -> tuple:
    """The fastest row of each precision per device and thread count: which runtime to ship at each precision."""
    def rank(value, order):
        return order.index(value) if value in order else len(order)

    fastest = _fastest(rows, ("device", "threads", "precision"))
    ordered = sorted(fastest.items(), key=lambda item: (rank(item[0][0], DEVICE_ORDER), item[0][1] or 0,
                                                          rank(item[0][2], PRECISION_ORDER)))
    cells = [[row["device"], text(row["threads"]), row["precision"], row["format"], row["runtime"], str(row["batch"]),
              significant(row["ms"]), significant(row["throughput_ips"]),
              times(row.get("speedup_vs_fp32"))] for _, row in ordered]
    return ("table", PRECISION_COLUMNS, cells)


def _int8_speedups(rows: list[dict]) -> list[tuple]:
    """Each runtime's int8 speed-ups over its own fp32 (rows within parity): what static quantisation buys there."""
    speedups = {}
    for row in rows:
        if row["precision"] == INT8.name and row["status"] == "ok" and not row.get("emulated") \
                and row.get("speedup_vs_fp32") is not None:
            speedups.setdefault(row["runtime"], []).append(row["speedup_vs_fp32"])
    if not speedups:
        return []
    return [("paragraph", "int8 over fp32 (same format, runtime, threads and batch; above 1: faster): "
             + "; ".join(f"{runtime} {_spread(values)}" for runtime, values in speedups.items()) + ".")]


def _parity_verdict(rows: list[dict]) -> str:
    compared = [row for row in rows if row["parity"] is not None]
    if not compared:
        return "Parity: no row was compared with the reference."
    failing = [row for row in compared if not row["parity"]["passed"]]
    verdict = f"Parity: {len(compared) - len(failing)} of {len(compared)} compared rows pass"
    if not failing:
        return verdict + "."
    return verdict + "; failing: " + "; ".join(
        f"{describe_row(row)} (rel err {scientific(row['parity']['rel_err'])}, cosine "
        f"{fixed(row['parity']['cosine'], 6)}, {row['parity']['tolerance']} limits)" for row in failing) + "."


# ----------------------------------------------------------------------------------------------------------------
# Machines and runs


def _emulation_notes(results_list: list[dict], labels: list[str]) -> list[tuple]:
    """Said before any latency is read: an emulated machine's numerics are its kernels' own, its speed is not
    (`mnv4 emulate`)."""
    notes = {label: f"{label} is emulated by {results['machine']['emulator']} (CPU model "
                    f"{results['machine']['qemu_cpu']}): {results['machine']['note']}."
             for results, label in zip(results_list, labels)
             if results["machine"].get("emulated")}
    return [("paragraph", note) for note in notes.values()]


def _machines_table(results_list: list[dict], labels: list[str]) -> tuple:
    columns = [("machine", False), ("variant", False), ("created", False), ("CPU", False),
               ("cores (physical/logical)", False), ("ISA", False), ("memory GB", True), ("GPU", False),
               ("FMA peak GFLOP/s per thread", True), ("OS", False), ("Python", False), ("versions", False)]
    cells = []
    for results, label in zip(results_list, labels):
        machine = results["machine"]
        versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items() if version)
        cells.append([label, results["model"]["variant"], results["created"], machine["cpu_model"],
                      f"{text(machine['physical_cores'])}/{machine['logical_cores']}", " ".join(machine["isa"]),
                      fixed(machine["memory_gb"], 1), text(machine["gpu"]),
                      significant(machine["fma_peak_gflops_per_thread"]), machine["os"], machine["python"],
                      versions])
    return ("table", columns, cells)


def _run_text(options: dict) -> str:
    """The exact command (when the runner recorded it) and every option, one per line."""
    lines = [f"$ {options['command']}"] if options.get("command") else []
    for key, value in options.items():
        if key != "command":
            shown = ", ".join(map(str, value)) if isinstance(value, list) else text(value)
            lines.append(f"{key}: {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# One section per model: latency, parity and artifacts, throughput, rows that are not ok


def _model_section(model: dict, rows: list[dict], several_machines: bool, protocol: str) -> list[tuple]:
    identity = _identity_columns(several_machines)
    timed = [row for row in rows if row["latency_ms"] is not None]
    # The plots show per-image latency: each machine's batch-1 rows (or its smallest batch).
    smallest = {machine: smallest_batch([row for row in timed if row["machine"] == machine])
                for machine in dict.fromkeys(row["machine"] for row in timed)}
    verified = [row for row in rows if row["parity"] is not None or row["artifact_bytes"] is not None]
    not_ok = [row for row in rows if row["status"] != "ok"]
    heading = f"{model['variant']} at {model['resolution']} px" + (
        f": {model['params'] / 1e6:.2f} M parameters, {model['macs'] / 1e9:.3f} GMACs per image"
        if model["macs"] else "")  # unknown for artifacts of an mnv4 that did not record them
    blocks = [("heading", 2, heading), ("heading", 3, "Latency")]
    if timed:
        columns = [(LATENCY_HEADERS[protocol], True), *LATENCY_COLUMNS[1:]]
        blocks.append(("table", identity + columns, [_cells(row, several_machines, _latency_cells)
                                                             for row in timed]))
        for machine, batch_rows in smallest.items():
            blocks.append(("figure", lambda r=batch_rows, m=machine: latency_figure(r, m, model["variant"]),
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
        blocks.append(("figure", lambda: parity_figure(both, model["variant"], several_machines),
                       ("Median latency against relative error (smallest batch per machine); dashed lines are the "
                       f"rel-err limits; an error of exactly 0 is drawn at {ZERO_ERROR:g}.")))

    sweeps = cuda_sweeps(timed)
    blocks.append(("heading", 3, "Throughput against batch (CUDA)"))
    if sweeps:
        blocks.append(("figure", lambda: throughput_figure(sweeps, model["variant"], several_machines),
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
    runtime = f"{row['runtime']} (emulated)" if row.get("emulated") else row["runtime"]
    cells = [row["source"], row["format"], runtime, row["device"], row["precision"], text(row["threads"]),
             str(row["batch"]), row["status"]]
    return ([row["machine"]] if several_machines else []) + cells + detail(row)


LATENCY_COLUMNS = [("median ms (p5–p95)", True), ("mean ± std ms", True), ("p99 ms", True), ("iters", True),
                   ("load ms", True), ("first inference ms", True), ("throughput img/s", True),
                   ("peak RSS MB", True), ("GFLOP/s", True), ("% of peak", True), ("vs fp32", True),
                   ("ours/timm", True)]
LATENCY_HEADERS = {"median": LATENCY_COLUMNS[0][0], "paper": "median of process means ms (p5–p95 of all calls)"}


def _latency_cells(row: dict) -> list[str]:
    latency = row["latency_ms"]
    median, mean = row["ms"], latency["mean"]
    return [f"{significant(median)} ({significant(latency['p5'], median)}–{significant(latency['p95'], median)})",
            f"{significant(mean)} ± {significant(latency['std'], mean)}", significant(latency["p99"], median),
            str(latency["iterations"]), significant(row["load_ms"]), significant(row["first_inference_ms"]),
            significant(row["throughput_ips"]), significant(row["peak_rss_mb"]), significant(row["gflops"]),
            percent(row["peak_fraction"]), times(row.get("speedup_vs_fp32")), times(row["ratio_vs_timm"])]


# Against PyTorch float32, then against the truth, float64: the artifact's error and PyTorch float32's own.
PARITY_COLUMNS = [("rel err", True), ("cosine", True), ("top-1", True), ("top-5", True), ("max |Δ|", True),
                  ("vs float64", True), ("fp32 vs float64", True),
                  ("tolerance", False), ("size MB", True), ("export s", True)]


def _parity_cells(row: dict) -> list[str]:
    parity = row["parity"] or {}
    truth = parity.get("float64") or {}  # results of mnv4 before the float64 truth have none
    size = row["artifact_bytes"]
    return [scientific(parity.get("rel_err")), fixed(parity.get("cosine"), 6),
            agreement(parity.get("top1_agreement")), agreement(parity.get("top5_agreement")),
            scientific(parity.get("max_abs")),
            *(scientific(truth.get(side, {}).get("rel_err")) for side in ("artifact", "pytorch_fp32")),
            text(parity.get("tolerance")),
            "—" if size is None else f"{size / 1e6:.2f}", fixed(row["export_seconds"], 1)]
