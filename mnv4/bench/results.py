"""The `results.json` that `mnv4 bench` writes and `mnv4 report` reads: schema checks, atomic writes, row order.

The schema is documented field by field in docs/bench.md; a file that does not match it is refused with one line
naming the file and the problem, because a report built from a half-understood file would publish wrong numbers."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from ..artifact import schema
from ..artifact.files import plain, read_json, write_json_atomically
from ..artifact.formats import FORMATS, RUNTIMES, TORCH
from ..artifact.precisions import PRECISIONS
from ..errors import MissingExtraError, MNV4Error

SCHEMA = "mnv4-bench/1"
# --latency: which statistic of latency_ms the report and the derived fields (throughput, GFLOP/s, speed-ups) use.
# "paper" is the MobileNetV4 paper's protocol: the median over repeats of the mean latency of many runs.
LATENCY_STATISTICS = {"median": "median", "paper": "median_of_process_means"}
LATENCY_PROTOCOLS = {"median": "the median over the timed calls of all of a row's processes (--latency median)",
                     "paper": "the MobileNetV4 paper's, the median over a row's processes (--repeats) of each "
                              "process's mean latency (--latency paper); p5–p95, mean and p99 stay over all calls"}


class Status(str, Enum):
    """What became of a row; results.json holds the value."""

    OK = "ok"  # measured, parity within its limits
    PARITY_FAILED = "parity-failed"  # measured, parity outside its limits
    FAILED = "failed"  # its export or its process failed
    UNAVAILABLE = "unavailable"  # its toolchain, runtime or device is not on this machine
    LATENCY_NOT_MEASURED = "latency-not-measured"  # parity measured, latency not representative here

    def __str__(self) -> str:  # as its value, where Python 3.11 would print "Status.OK"
        return self.value


def unavailable_reason(error: MissingExtraError) -> str:
    """The reason of a row whose toolchain or runtime is not installed here: what to install."""
    return f"unavailable: install mnv4[{error.extra}]"


SOURCES = ("mnv4", "timm")
STATUSES = tuple(status.value for status in Status)
# Report order: the deployment formats first, the PyTorch baselines last; within torch, from plain to most tuned.
FORMAT_ORDER = (*FORMATS, TORCH)
RUNTIME_ORDER = (*RUNTIMES, "torch-eager", "torch-channels_last", "torch-compile", "torch-cuda-graphs")
PRECISION_ORDER = tuple(PRECISIONS)
# What computes a row: the CPU, a GPU through a runtime (a delegate, Vulkan, WebGPU), or PyTorch on CUDA.
DEVICE_ORDER = ("cpu", "gpu", "cuda")


def row_identity(row: dict) -> tuple:
    """What one row measured; two rows with the same identity on one machine and variant contradict each other."""
    return (row["source"], row["format"], row["runtime"], row["device"], row["precision"], row["threads"],
            row["batch"])


def describe_row(row: dict) -> str:
    threads = row.get("device") if row.get("threads") is None else f"{row['threads']} threads"
    return (f"{row.get('source')} {row.get('format')}/{row.get('runtime')} {row.get('precision')} "
            f"{threads} batch {row.get('batch')}")


def row_order(row: dict) -> tuple:
    """Sort key: device, format, runtime, precision, threads, batch, then mnv4 directly above its timm twin."""
    def rank(value, order):
        return (order.index(value), "") if value in order else (len(order), str(value))

    return (rank(row["device"], DEVICE_ORDER), rank(row["format"], FORMAT_ORDER),
            rank(row["runtime"], RUNTIME_ORDER), rank(row["precision"], PRECISION_ORDER), row["threads"] or 0, row["batch"],
            rank(row["source"], SOURCES))


_NUMBER = schema.number(0)
_MAYBE_NUMBER = schema.NOTHING | _NUMBER
_COUNT = schema.integer(1)
_MAYBE_COUNT = schema.NOTHING | _COUNT
_NAME = schema.text(256)
_MAYBE_NAME = schema.NOTHING | _NAME
_MACHINE = {"id": _NAME, "hostname": _NAME, "os": _NAME, "platform": _NAME, "python": _NAME, "cpu_model": _NAME,
            "physical_cores": _MAYBE_COUNT, "logical_cores": _MAYBE_COUNT, "isa": schema.list_of(_NAME),
            "memory_gb": _MAYBE_NUMBER, "gpu": _MAYBE_NAME, "fma_peak_gflops_per_thread": _MAYBE_NUMBER}
_OPTIONS = {"variant": _NAME, "formats": schema.list_of(_NAME), "precisions": schema.list_of(_NAME),
            "threads": schema.list_of(_COUNT), "batches": schema.list_of(_COUNT), "device": _NAME,
            "warmup": schema.integer(0), "iterations": _MAYBE_COUNT, "min_seconds": _MAYBE_NUMBER,
            "weights": schema.NOTHING | schema.OBJECT | _NAME, "resolution": _COUNT, "compare_timm": schema.BOOLEAN,
            "latency": schema.one_of(tuple(LATENCY_STATISTICS))}
_MODEL = {"variant": _NAME, "resolution": _COUNT, "macs": schema.NOTHING | schema.integer(0),
          "params": schema.NOTHING | schema.integer(0)}
_ROW = {"source": schema.one_of(SOURCES), "format": _NAME, "runtime": _NAME, "device": schema.one_of(DEVICE_ORDER),
        "precision": _NAME, "threads": _MAYBE_COUNT, "batch": _COUNT, "status": schema.one_of(STATUSES),
        "reason": _MAYBE_NAME, "latency_ms": schema.NOTHING | schema.OBJECT, "load_ms": _MAYBE_NUMBER,
        "first_inference_ms": _MAYBE_NUMBER, "throughput_ips": _MAYBE_NUMBER, "peak_rss_mb": _MAYBE_NUMBER,
        "artifact_bytes": schema.NOTHING | schema.integer(0), "export_seconds": _MAYBE_NUMBER,
        "parity": schema.NOTHING | schema.OBJECT, "gflops": _MAYBE_NUMBER, "peak_fraction": _MAYBE_NUMBER,
        "ratio_vs_timm": _MAYBE_NUMBER}
_LATENCY = {**dict.fromkeys(("mean", "median", "p5", "p95", "p99", "std", "min", "max"), _NUMBER),
            "iterations": _COUNT, "median_of_process_means": _NUMBER}
# Results written before --latency lack these, and were timed by the pooled median.
_OPTIONAL = {"options": ("latency",), "latency_ms": ("median_of_process_means",)}
# Errors and cosines that were not finite are written as null.
_PARITY = {**dict.fromkeys(("rel_err", "max_abs"), _MAYBE_NUMBER),
           **dict.fromkeys(("cosine", "top1_agreement", "top5_agreement"), schema.NOTHING | schema.number(-1, 1)),
           "tolerance": _NAME, "passed": schema.NOTHING | schema.BOOLEAN}


def validate(results: object, name: str) -> None:
    """Raise MNV4Error("<name>...: <problem>") unless `results` follows the schema, every field of its kind."""
    found = results.get("schema") if isinstance(results, dict) else None
    if found != SCHEMA:
        raise MNV4Error(f"{name}: not an mnv4 bench results file (schema {found!r}; this mnv4 reads {SCHEMA!r})")
    schema.check(results, {"created": _NAME, "machine": schema.OBJECT, "versions": schema.OBJECT,
                           "options": schema.OBJECT, "model": schema.OBJECT, "rows": schema.list_of(schema.OBJECT)}, name)
    for section, fields in (("machine", _MACHINE), ("options", _OPTIONS), ("model", _MODEL)):
        schema.check(results[section], fields, f"{name} ({section})", _OPTIONAL.get(section, ()))
    statistic = LATENCY_STATISTICS[latency_protocol([results])]
    seen = {}
    for index, row in enumerate(results["rows"]):
        schema.check(row, _ROW, f"{name} (row {index})")
        where = f"{name} (row {index}: {describe_row(row)})"
        _check_status(row, where)
        if row["latency_ms"] is not None:
            schema.check(row["latency_ms"], _LATENCY, f"{where} latency_ms", _OPTIONAL["latency_ms"])
            if statistic not in row["latency_ms"]:
                raise MNV4Error(f"{where} latency_ms is missing the key {statistic!r} that its --latency needs")
        if row["parity"] is not None:
            schema.check(row["parity"], _PARITY, f"{where} parity")
        identity = row_identity(row)
        if identity in seen:
            raise MNV4Error(f"{where} repeats row {seen[identity]}")
        seen[identity] = index


def _check_status(row: dict, where: str) -> None:
    """What each status needs: a reason unless ok, a latency where measured, a parity where it failed."""
    status = Status(row["status"])
    if status is not Status.OK and not row["reason"]:
        raise MNV4Error(f"{where}: status {status.value!r} needs a reason")
    # parity-failed may lack a latency: a Core ML program interpreted off macOS is checked, not timed.
    if status is Status.OK and row["latency_ms"] is None:
        raise MNV4Error(f"{where}: status {status.value!r} needs a latency_ms")
    if status in (Status.UNAVAILABLE, Status.LATENCY_NOT_MEASURED) and row["latency_ms"] is not None:
        raise MNV4Error(f"{where}: status {status.value!r} must not have a latency_ms")
    if status is Status.PARITY_FAILED and row["parity"] is None:
        raise MNV4Error(f"{where}: status {status.value!r} needs a parity")


def latency_protocol(results_list: list[dict], names: list[str] | None = None) -> str:
    """The --latency protocol of all the files: one report cannot set one file's statistic beside another's."""
    protocols = [results["options"].get("latency", "median") for results in results_list]
    if len(set(protocols)) > 1:
        names = names or [f"results {index + 1}" for index in range(len(results_list))]
        raise MNV4Error("the results files were timed with different --latency protocols ("
                        + ", ".join(f"{name}: {protocol}" for name, protocol in zip(names, protocols))
                        + "); merge files timed alike")
    return protocols[0] if protocols else "median"


def results_document(machine: dict, options: dict, model: dict, rows: list[dict]) -> dict:
    """The one builder of a results.json document, for `mnv4 bench` and `mnv4 bench-artifacts` alike."""
    from .machine import versions

    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine,
            "versions": versions(), "options": options, "model": model, "rows": rows}


def strict_failures(results: dict) -> list[str]:
    """What --strict fails on: rows that failed or breach parity."""
    return [f"{describe_row(row)}: {row['status']}: {row['reason']}" for row in results["rows"]
            if row["status"] in (Status.FAILED, Status.PARITY_FAILED)]


def load_results(path: str | Path) -> dict:
    results = read_json(path, "results file")
    validate(results, str(path))
    return results


def write_results(results: dict, path: str | Path) -> Path:
    """Validate, then write beside the target and rename over it, so a reader never sees half a file."""
    path = Path(path)
    results = plain(results)
    validate(results, str(path))
    return write_json_atomically(results, path)


def machine_labels(results_list: list[dict]) -> list[str]:
    """One label per results file: the machine id, made unique when different machines share an id
    (two boards both called "localhost"); files from the same machine keep the same label."""
    labels, owners = [], {}
    for results in results_list:
        machine = results["machine"]
        owner = (machine["hostname"], machine["cpu_model"], machine["gpu"])
        label, suffix = machine["id"], 2
        while owners.setdefault(label, owner) != owner:
            label, suffix = f"{machine['id']} #{suffix}", suffix + 1
        labels.append(label)
    return labels


def summary_rows(results_list: list[dict], names: list[str] | None = None) -> list[dict]:
    """Every row of every file, with "machine" (its label), "variant" and "resolution" added, in report order.

    A row measured twice (same machine, variant, resolution and identity, in two files) is refused: the report could
    show only one of the two numbers, and choosing silently would be wrong. `names` name the files in that message."""
    names = names or [f"results {index + 1}" for index in range(len(results_list))]
    labels = machine_labels(results_list)
    merged, seen = [], {}
    for results, label, name in zip(results_list, labels, names):
        model = results["model"]
        for row in results["rows"]:
            key = (label, model["variant"], model["resolution"], row_identity(row))
            if key in seen:
                raise MNV4Error(f"{name}: {label} {model['variant']} {describe_row(row)} is already in "
                                f"{seen[key]}; merge files that measure different things")
            seen[key] = name
            merged.append({**row, "machine": label, "variant": model["variant"], "resolution": model["resolution"]})
    machine_rank = {label: labels.index(label) for label in labels}
    model_rank = {}
    for row in merged:
        model_rank.setdefault((row["variant"], row["resolution"]), len(model_rank))
    return sorted(merged, key=lambda row: (model_rank[row["variant"], row["resolution"]],
                                           machine_rank[row["machine"]], row_order(row)))
