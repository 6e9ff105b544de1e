"""The `results.json` that `mnv4 bench` writes and `mnv4 report` reads: schema checks, atomic writes, row order.

The schema is documented field by field in docs/bench.md; a file that does not match it is refused with one line
naming the file and the problem, because a report built from a half-understood file would publish wrong numbers."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from ..artifact.files import write_json_atomically
from ..artifact.formats import FORMATS, TORCH
from ..artifact.precisions import PRECISIONS
from ..errors import MNV4Error

SCHEMA = "mnv4-bench/1"


class Status(str, Enum):
    """What became of a row; results.json holds the value."""

    OK = "ok"  # measured, parity within its limits
    PARITY_FAILED = "parity-failed"  # measured, parity outside its limits
    FAILED = "failed"  # its export or its process failed
    UNAVAILABLE = "unavailable"  # its toolchain, runtime or device is not on this machine
    LATENCY_NOT_MEASURED = "latency-not-measured"  # parity measured, latency not representative here

    def __str__(self) -> str:  # as its value, where Python 3.11 would print "Status.OK"
        return self.value



TOP_KEYS = ("schema", "created", "machine", "versions", "options", "model", "rows")
MACHINE_KEYS = ("id", "hostname", "os", "platform", "python", "cpu_model", "physical_cores", "logical_cores", "isa",
                "memory_gb", "gpu", "fma_peak_gflops_per_thread")
OPTION_KEYS = ("variant", "formats", "precisions", "threads", "batches", "device", "warmup", "iterations",
               "min_seconds", "weights", "resolution", "compare_timm")
MODEL_KEYS = ("variant", "resolution", "macs", "params")
ROW_KEYS = ("source", "format", "runtime", "device", "precision", "threads", "batch", "status", "reason",
            "latency_ms", "load_ms", "first_inference_ms", "throughput_ips", "peak_rss_mb", "artifact_bytes",
            "export_seconds", "parity", "gflops", "peak_fraction", "ratio_vs_timm")
LATENCY_KEYS = ("mean", "median", "p5", "p95", "p99", "std", "min", "max", "iterations")
PARITY_KEYS = ("rel_err", "cosine", "top1_agreement", "top5_agreement", "max_abs", "tolerance", "passed")

SOURCES = ("mnv4", "timm")
STATUSES = tuple(status.value for status in Status)
# Report order: the deployment formats first, the PyTorch baselines last; within torch, from plain to most tuned.
FORMAT_ORDER = (*FORMATS, TORCH)
RUNTIME_ORDER = ("torch-eager", "torch-channels_last", "torch-compile", "torch-cuda-graphs")
PRECISION_ORDER = tuple(PRECISIONS)
DEVICE_ORDER = ("cpu", "cuda")


def row_identity(row: dict) -> tuple:
    """What one row measured; two rows with the same identity on one machine and variant contradict each other."""
    return (row["source"], row["format"], row["runtime"], row["device"], row["precision"], row["threads"],
            row["batch"])


def describe_row(row: dict) -> str:
    threads = "cuda" if row.get("threads") is None else f"{row['threads']} threads"
    return (f"{row.get('source')} {row.get('format')}/{row.get('runtime')} {row.get('precision')} "
            f"{threads} batch {row.get('batch')}")


def row_order(row: dict) -> tuple:
    """Sort key: device, format, runtime, precision, threads, batch, then mnv4 directly above its timm twin."""
    def rank(value, order):
        return (order.index(value), "") if value in order else (len(order), str(value))

    return (rank(row["device"], DEVICE_ORDER), rank(row["format"], FORMAT_ORDER),
            rank(row["runtime"], RUNTIME_ORDER), rank(row["precision"], PRECISION_ORDER), row["threads"] or 0, row["batch"],
            rank(row["source"], SOURCES))


def validate(results: object, name: str) -> None:
    """Raise MNV4Error("<name>: <problem>") unless `results` follows the schema."""
    schema = results.get("schema") if isinstance(results, dict) else None
    if schema != SCHEMA:
        raise MNV4Error(f"{name}: not an mnv4 bench results file (schema {schema!r}; this mnv4 reads {SCHEMA!r})")
    _require(results, TOP_KEYS, name, "")
    for section, keys in (("machine", MACHINE_KEYS), ("options", OPTION_KEYS), ("model", MODEL_KEYS)):
        _require(results[section], keys, name, f"{section}: ")
    if not isinstance(results["rows"], list):
        raise MNV4Error(f"{name}: 'rows' is not a list")
    seen = {}
    for index, row in enumerate(results["rows"]):
        where = f"row {index}"
        _require(row, ROW_KEYS, name, f"{where}: ")
        where = f"row {index} ({describe_row(row)})"
        if row["source"] not in SOURCES:
            raise MNV4Error(f"{name}: {where}: source {row['source']!r} is not one of {', '.join(SOURCES)}")
        if row["status"] not in STATUSES:
            raise MNV4Error(f"{name}: {where}: status {row['status']!r} is not one of {', '.join(STATUSES)}")
        status = Status(row["status"])
        if status is not Status.OK and not row["reason"]:
            raise MNV4Error(f"{name}: {where}: status {status.value!r} needs a reason")
        # parity-failed may lack a latency: a Core ML program interpreted off macOS is checked, not timed.
        if status is Status.OK and row["latency_ms"] is None:
            raise MNV4Error(f"{name}: {where}: status {status.value!r} needs a latency_ms")
        if status in (Status.UNAVAILABLE, Status.LATENCY_NOT_MEASURED) and row["latency_ms"] is not None:
            raise MNV4Error(f"{name}: {where}: status {status.value!r} must not have a latency_ms")
        if status is Status.PARITY_FAILED and row["parity"] is None:
            raise MNV4Error(f"{name}: {where}: status {status.value!r} needs a parity")
        if row["latency_ms"] is not None:
            _require(row["latency_ms"], LATENCY_KEYS, name, f"{where}: latency_ms: ")
        if row["parity"] is not None:
            _require(row["parity"], PARITY_KEYS, name, f"{where}: parity: ")
        identity = row_identity(row)
        if identity in seen:
            raise MNV4Error(f"{name}: {where} repeats row {seen[identity]}")
        seen[identity] = index


def results_document(machine: dict, options: dict, model: dict, rows: list[dict]) -> dict:
    """The one builder of a results.json document, for `mnv4 bench` and `mnv4 bench-artifacts` alike."""
    from .machine import versions

    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine,
            "versions": versions(), "options": options, "model": model, "rows": rows}


def strict_failures(results: dict) -> list[str]:
    """What --strict fails on: rows that failed or breach parity."""
    return [f"{describe_row(row)}: {row['status']}: {row['reason']}" for row in results["rows"]
            if row["status"] in (Status.FAILED, Status.PARITY_FAILED)]


def _require(section: object, keys: tuple, name: str, where: str) -> None:
    if not isinstance(section, dict):
        raise MNV4Error(f"{name}: {where or 'top level: '}not a JSON object")
    missing = [key for key in keys if key not in section]
    if missing:
        raise MNV4Error(f"{name}: {where}missing {', '.join(repr(key) for key in missing)}")


def load_results(path: str | Path) -> dict:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise MNV4Error(f"{name}: cannot read ({error.strerror or error})") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as error:
        raise MNV4Error(f"{name}: not valid JSON (line {error.lineno}: {error.msg})") from None
    validate(results, name)
    return results


def write_results(results: dict, path: str | Path) -> Path:
    """Validate, then write beside the target and rename over it, so a reader never sees half a file."""
    path = Path(path)
    validate(results, str(path))
    return write_json_atomically(results, path, default=_builtin)


def _builtin(value):
    """numpy scalars (a median from np.percentile, a count from np.int64) as plain Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
