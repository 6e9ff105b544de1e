"""results.json (schema checks, atomic writes) and the Markdown/HTML report built from one or several machines."""
import base64
import json
import re
import sys

import pytest

from mnv4.bench.latency import median_of_process_means
from mnv4.bench.measure import _pooled_latency
from mnv4.bench.report import merge, render_html, render_markdown, write_report
from mnv4.bench.report.document import HOW_TO_READ
from mnv4.bench.results import SCHEMA, Status, load_results, write_results
from mnv4.errors import MNV4Error

CONV_SMALL_MACS = 186_000_000


def latency(median, spread=0.05):
    return {"mean": median * 1.01, "median": median, "p5": median * (1 - spread), "p95": median * (1 + 2 * spread),
            "p99": median * (1 + 3 * spread), "std": median * spread, "min": median * 0.9, "max": median * 1.5,
            "iterations": 200}


def parity(rel_err, cosine=0.999999, tolerance="fp32", passed=True, top1=1.0):
    """A row's parity as the bench records it, with the artifact's and PyTorch float32's error against float64."""
    return {"rel_err": rel_err, "cosine": cosine, "top1_agreement": top1, "top5_agreement": 1.0,
            "max_abs": rel_err * 12, "tolerance": tolerance, "passed": passed,
            "float64": {"artifact": {"rel_err": rel_err * 1.25}, "pytorch_fp32": {"rel_err": 1.5e-6}}}


def row(fmt, runtime, median=None, *, source="mnv4", precision="fp32", threads=1, batch=1, device="cpu",
        status=Status.OK, reason=None, parity=None, ratio=None, artifact_bytes=None):
    """One row as the runner writes it (its status the value results.json holds), derived fields computed from the
    median as docs/bench.md defines them."""
    measured = median is not None
    gflops = 2 * CONV_SMALL_MACS * batch / (median / 1000) / 1e9 if measured else None
    return {"source": source, "format": fmt, "runtime": runtime, "device": device, "precision": precision,
            "threads": threads, "batch": batch, "status": status.value, "reason": reason,
            "latency_ms": latency(median) if measured else None, "load_ms": 35.5 if measured else None,
            "first_inference_ms": 2.5 * median if measured else None,
            "throughput_ips": batch * 1000 / median if measured else None, "peak_rss_mb": 412.0 if measured else None,
            "artifact_bytes": artifact_bytes, "export_seconds": 7.25 if artifact_bytes else None, "parity": parity,
            "gflops": gflops, "peak_fraction": gflops / (120.0 * threads) if measured and threads else None,
            "ratio_vs_timm": ratio}


def results(machine_id, rows, *, hostname="box", cpu="AMD EPYC 9654", gpu=None, device="cpu"):
    return {
        "schema": SCHEMA, "created": "2026-11-27T21:00:00Z",
        "machine": {"id": machine_id, "hostname": hostname, "os": "Linux 6.8", "platform": "linux-x86_64",
                    "python": "3.11.9", "cpu_model": cpu, "physical_cores": 8, "logical_cores": 16,
                    "isa": ["avx2", "fma", "avx512f"], "memory_gb": 62.7, "gpu": gpu,
                    "fma_peak_gflops_per_thread": 120.0},
        "versions": {"mnv4": "0.1.0", "torch": "2.14.1", "onnxruntime": "1.31.0", "coremltools": None},
        "options": {"variant": "conv_small", "formats": ["onnx", "tflite", "executorch", "coreml", "torch"],
                    "precisions": ["fp32", "fp16"], "threads": [1], "batches": [1, 8, 64], "device": device,
                    "warmup": 20, "iterations": None, "min_seconds": 2.0, "weights": None, "resolution": 224,
                    "compare_timm": True, "command": f"mnv4 bench --variant conv_small --device {device}"},
        "model": {"variant": "conv_small", "resolution": 224, "macs": CONV_SMALL_MACS, "params": 3_774_024},
        "rows": rows,
    }


@pytest.fixture
def linux():
    """A Linux box with a GPU: every status, mnv4 against timm, and a CUDA batch sweep."""
    rows = [
        row("torch", "torch-eager", 9.87),
        row("onnx", "onnxruntime", 4.12, parity=parity(3.1e-6), ratio=0.95, artifact_bytes=15_123_456),
        row("onnx", "onnxruntime", 4.34, source="timm", parity=parity(2.9e-6), artifact_bytes=15_120_000),
        row("tflite", "litert", 5.5, precision="fp16", status=Status.PARITY_FAILED,
            reason="relative error 0.0862 > 0.02 (4.3x the limit)",
            parity=parity(0.0862, 0.9951, "fp16", passed=False, top1=10 / 11), artifact_bytes=7_600_000),
        row("executorch", "executorch", status=Status.UNAVAILABLE, reason="unavailable: install mnv4[executorch]"),
        row("onnx", "onnxruntime", precision="fp16", status=Status.FAILED,
            reason="RuntimeError: Type Error: Type (tensor(float16)) of input parameter is invalid"),
        row("coreml", "coreml", status=Status.LATENCY_NOT_MEASURED, reason="latency: macOS only",
            parity=parity(4.4e-6), artifact_bytes=15_500_000),
    ]
    for batch, median in ((1, 0.41), (8, 0.62), (64, 2.95)):
        rows.append(row("torch", "torch-cuda-graphs", median, precision="fp16", threads=None, batch=batch,
                        device="cuda", parity=parity(4.1e-3, 0.99999, "fp16"), ratio=0.9))
        rows.append(row("torch", "torch-cuda-graphs", median / 0.9, source="timm", precision="fp16", threads=None,
                        batch=batch, device="cuda", parity=parity(4.2e-3, 0.99999, "fp16")))
    return results("linux-epyc", rows, gpu="NVIDIA H100 80GB HBM3", device="cuda")


@pytest.fixture
def mac():
    rows = [row("coreml", "coreml", 1.23, parity=parity(5.0e-6), artifact_bytes=15_500_000),
            row("coreml", "coreml", 0.98, precision="fp16", parity=parity(2.4e-2, 0.9985, "fp16-arithmetic"),
                artifact_bytes=7_800_000),
            row("torch", "torch-eager", 6.4)]
    data = results("mac-m3", rows, hostname="mac", cpu="Apple M3 Pro")
    data["machine"]["isa"] = ["neon", "fp16"]
    return data


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


# ---------------------------------------------------------------------------------------------------------------
# results.json


def test_results_round_trip_through_an_atomic_write(tmp_path, linux):
    path = write_results(linux, tmp_path / "out" / "results.json")
    assert load_results(path) == linux
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left behind


def test_numpy_numbers_are_written_as_plain_json_numbers(tmp_path, linux):
    np = pytest.importorskip("numpy")
    linux["rows"][1]["latency_ms"]["median"] = np.float64(4.12)
    linux["rows"][1]["latency_ms"]["iterations"] = np.int64(200)
    loaded = load_results(write_results(linux, tmp_path / "results.json"))
    assert loaded["rows"][1]["latency_ms"]["median"] == 4.12 and loaded["rows"][1]["latency_ms"]["iterations"] == 200


def test_a_file_of_another_schema_is_refused_in_one_line(tmp_path):
    path = tmp_path / "A.json"
    path.write_text(json.dumps({"schema": "x", "rows": []}))
    with pytest.raises(MNV4Error) as excinfo:
        load_results(path)
    message = one_line_error(excinfo)
    assert message.startswith(f"{path}: not an mnv4 bench results file (schema 'x'")


def test_invalid_json_is_refused_in_one_line(tmp_path):
    path = tmp_path / "A.json"
    path.write_text('{"schema": "mnv4-bench/1",')
    with pytest.raises(MNV4Error) as excinfo:
        load_results(path)
    assert one_line_error(excinfo).startswith(f"results file {path} is not valid JSON (line 1")


def test_a_row_without_status_is_refused_naming_the_row(tmp_path, linux):
    del linux["rows"][2]["status"]
    path = tmp_path / "A.json"
    path.write_text(json.dumps(linux))
    with pytest.raises(MNV4Error) as excinfo:
        load_results(path)
    assert one_line_error(excinfo) == f"{path} (row 2) is missing the key 'status'"


def test_a_row_that_did_not_run_needs_a_reason_and_nothing_is_written_without_one(tmp_path, linux):
    path = write_results(linux, tmp_path / "results.json")
    before = path.read_bytes()
    linux["rows"][4]["reason"] = None
    with pytest.raises(MNV4Error) as excinfo:
        write_results(linux, path)
    assert "(row 4: mnv4 executorch/executorch fp32 1 threads batch 1): status 'unavailable' needs a reason" in (
        one_line_error(excinfo))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("index, change, problem", [
    (1, {"status": "done"}, "'status': 'done' (expected one of ok, parity-failed, failed, unavailable, "
                            "latency-not-measured)"),
    (1, {"latency_ms": None}, "status 'ok' needs a latency_ms"),
    (6, {"latency_ms": latency(3.0)}, "status 'latency-not-measured' must not have a latency_ms"),
    (3, {"parity": None}, "status 'parity-failed' needs a parity"),
])
def test_a_row_whose_numbers_contradict_its_status_is_refused(tmp_path, linux, index, change, problem):
    linux["rows"][index].update(change)
    with pytest.raises(MNV4Error) as excinfo:
        write_results(linux, tmp_path / "results.json")
    assert one_line_error(excinfo).endswith(problem)


def test_the_same_configuration_twice_in_one_file_is_refused(tmp_path, linux):
    linux["rows"].append(dict(linux["rows"][1]))
    with pytest.raises(MNV4Error) as excinfo:
        write_results(linux, tmp_path / "results.json")
    assert f"(row {len(linux['rows']) - 1}: mnv4 onnx/onnxruntime fp32 1 threads batch 1) repeats row 1" in (
        one_line_error(excinfo))


# ---------------------------------------------------------------------------------------------------------------
# report.md


def test_markdown_has_the_command_the_numbers_and_every_reason(tmp_path, linux):
    md_path, _ = write_report([load_results(write_results(linux, tmp_path / "results.json"))], tmp_path)
    md = md_path.read_text()
    assert "$ mnv4 bench --variant conv_small --device cuda" in md and "min_seconds: 2.0" in md
    assert "| linux-epyc | conv_small | 2026-11-27T21:00:00Z | AMD EPYC 9654 | 8/16 | avx2 fma avx512f |" in md
    assert "mnv4 0.1.0, torch 2.14.1, onnxruntime 1.31.0 |" in md  # a missing library is left out
    assert "conv_small at 224 px: 3.77 M parameters, 0.186 GMACs per image" in md
    onnx = ("| mnv4 | onnx | onnxruntime | cpu | fp32 | 1 | 1 | ok | 4.12 (3.91–4.53) | 4.16 ± 0.21 | 4.74 | 200 "
            "| 35.5 | 10.3 | 243 | 412 | 90.3 | 75.2% | — | 0.95× |")
    assert onnx in md
    assert "| mnv4 | onnx | onnxruntime | cpu | fp32 | 1 | 1 | ok | 3.10e-06 | 0.999999 | 100% | 100% | 3.72e-05 | 3.88e-06 " \
           "| 1.50e-06 | fp32 | 15.12 | 7.2 |" in md
    assert "| parity-failed | 8.62e-02 | 0.995100 | 90.9% | 100% |" in md
    assert "| mnv4 | torch | torch-cuda-graphs | cuda | fp16 | — | 64 | ok | 2.95 (2.80–3.25) |" in md
    assert "| unavailable | unavailable: install mnv4[executorch] |" in md
    assert "| failed | RuntimeError: Type Error: Type (tensor(float16)) of input parameter is invalid |" in md
    assert "| mnv4 | coreml | coreml | cpu | fp32 | 1 | 1 | latency-not-measured | latency: macOS only |" in md
    assert "| machine |" not in md.split("## conv_small")[1]  # one machine: no machine column


def test_rows_are_in_format_order_with_timm_under_its_mnv4_twin(linux):
    latency_table = render_markdown([linux]).split("### Latency")[1].split("### Parity")[0]
    lines = [line for line in latency_table.splitlines() if line.startswith(("| mnv4", "| timm"))]
    order = [tuple(cell.strip() for cell in line.split("|")[1:4]) for line in lines[:5]]
    assert order == [("mnv4", "onnx", "onnxruntime"), ("timm", "onnx", "onnxruntime"), ("mnv4", "tflite", "litert"),
                     ("mnv4", "torch", "torch-eager"), ("mnv4", "torch", "torch-cuda-graphs")]


def test_report_has_a_clear_line_for_a_results_file_with_no_latency(linux):
    linux["rows"] = [row for row in linux["rows"] if row["latency_ms"] is None and row["parity"] is None]
    md = render_markdown([linux])
    assert "No row has a latency measurement." in md and "No row has a parity measurement or an artifact." in md


def test_the_headline_comes_first_with_the_fastest_row_per_format_and_the_verdicts(linux, mac):
    # At 2 threads ONNX and PyTorch are faster still; ONNX's speed-up is over PyTorch eager at 2 threads, not at 1.
    linux["rows"] += [row("onnx", "onnxruntime", 2.5, threads=2, parity=parity(3.0e-6), ratio=0.97),
                      row("torch", "torch-eager", 5.0, threads=2)]
    md = render_markdown([linux, mac])
    assert md.index("# MobileNetV4 benchmark") < md.index("## Headline") < md.index(HOW_TO_READ[0]) \
        < md.index("## Machines")
    linux_headline, mac_headline = md.split("## How to read this report")[0].split("### ")[1:]
    assert linux_headline.startswith("linux-epyc: conv_small at 224 px") and mac_headline.startswith("mac-m3: conv_small")
    fastest_table = linux_headline.split("| device | threads | precision |")[0]
    assert [line for line in fastest_table.splitlines() if line.startswith("| ")][1:] == [
        "| onnx | cpu | onnxruntime | fp32 | 2 | 1 | 2.50 | 400 | 2.00× | 0.97× |",
        "| torch | cpu | torch-eager | fp32 | 2 | 1 | 5.00 | 200 | 1.00× | — |",
        "| torch | cuda | torch-cuda-graphs | fp16 | — | 64 | 2.95 | 21695 | — | 0.90× |"]
    assert "Not timed within parity: tflite on cpu (parity-failed); executorch on cpu (unavailable); coreml on cpu " \
           "(latency-not-measured)." in linux_headline
    assert "Parity: 10 of 11 compared rows pass; failing: mnv4 tflite/litert fp16 1 threads batch 1 (rel err 8.62e-02, " \
           "cosine 0.995100, fp16 limits)." in linux_headline
    assert "ours/timm: 0.90× to 0.97× over 5 configuration(s)" in linux_headline
    # Core ML fp16 (within its fp16-arithmetic limits) beats fp32; no timm rows, so no ours/timm line.
    assert "| coreml | cpu | coreml | fp16 | 1 | 1 | 0.980 | 1020 | 6.53× | — |" in mac_headline
    assert "Parity: 2 of 2 compared rows pass." in mac_headline and "ours/timm:" not in mac_headline
    page = render_html([linux, mac])
    assert page.index("<h2>Headline</h2>") < page.index("<h2>How to read this report</h2>")
    assert '<td class="num">2.00×</td>' in page and "Parity: 10 of 11 compared rows pass; failing:" in page


def test_the_headline_names_the_fastest_row_of_each_precision_and_the_int8_speed_ups(linux):
    def int8(fmt, runtime, median, speedup, threads=1, **kwargs):
        return {**row(fmt, runtime, median, precision="int8", threads=threads, parity=parity(8e-3, 0.999, "int8"),
                      **kwargs), "speedup_vs_fp32": speedup}

    linux["rows"] += [
        int8("onnx", "onnxruntime", 2.06, 2.0), int8("onnx", "onnxruntime", 1.5, 1.8, threads=2),
        int8("tflite", "litert", 3.0, 1.5),
        # Neither is the fastest int8 row, nor in the speed-ups: one breaches parity, one ran on a software device.
        int8("executorch", "executorch", 1.0, 4.0, status=Status.PARITY_FAILED, reason="relative error 0.9 > 0.05"),
        {**int8("tflite", "litert-gpu", 0.5, 8.0), "emulated": True, "ratio_vs_timm": 1.79}]
    headline = render_markdown([linux]).split("## How to read this report")[0]
    table = headline.split("| device | threads | precision | format | runtime | batch | median ms | img/s | vs own fp32 |")[1]
    assert [line for line in table.splitlines() if line.startswith("| ")] == [
        "| cpu | 1 | fp32 | onnx | onnxruntime | 1 | 4.12 | 243 | — |",
        "| cpu | 1 | int8 | onnx | onnxruntime | 1 | 2.06 | 485 | 2.00× |",
        "| cpu | 2 | int8 | onnx | onnxruntime | 1 | 1.50 | 667 | 1.80× |",
        "| cuda | — | fp16 | torch | torch-cuda-graphs | 64 | 2.95 | 21695 | — |"]
    assert "int8 over fp32 (same format, runtime, threads and batch; above 1: faster): onnxruntime 1.80× to 2.00×; " \
           "litert 1.50×." in headline
    assert "1.79×" not in headline.split("ours/timm:")[1]  # the emulated row's ratio is in its row, not the summary


def test_the_papers_latency_is_the_median_of_each_process_mean():
    # Each process's mean (2, 10, 4), then their median.
    runs = [{"times_ms": [1.0, 2.0, 3.0]}, {"times_ms": [10.0, 10.0, 10.0]}, {"times_ms": [4.0, 4.0, 4.0]}]
    assert median_of_process_means([run["times_ms"] for run in runs]) == 4.0
    assert _pooled_latency(runs)["median_of_process_means"] == 4.0 and _pooled_latency(runs)["processes"] == 3
    assert _pooled_latency([{"times_ms": [1.0, 2.0, 9.0]}])["median_of_process_means"] == 4.0  # one process: its mean
    assert _pooled_latency([{"times_ms": [1.0, 2.0, 9.0]}])["median"] == 2.0


def paper(data):
    """The results as `--latency paper` writes them: each latency with the paper's statistic, the protocol recorded."""
    data["options"]["latency"] = "paper"
    for entry in data["rows"]:
        if entry["latency_ms"]:
            entry["latency_ms"]["median_of_process_means"] = entry["latency_ms"]["median"] * 2
    return data


def test_the_report_names_its_latency_protocol_and_uses_its_statistic(tmp_path, linux):
    assert "Latency protocol: the median over the timed calls of all of a row's processes (--latency median)." \
        in render_markdown([linux])
    md = render_markdown([load_results(write_results(paper(linux), tmp_path / "results.json"))])
    headline = md.split("## How to read this report")[0]
    assert "Latency protocol: the MobileNetV4 paper's, the median over a row's processes (--repeats) of each " \
           "process's mean latency (--latency paper)" in headline
    assert "| onnx | cpu | onnxruntime | fp32 | 1 | 1 | 8.24 |" in headline  # 2 × the pooled median 4.12
    assert "| median of process means ms (p5–p95 of all calls) |" in md
    assert "| mnv4 | onnx | onnxruntime | cpu | fp32 | 1 | 1 | ok | 8.24 (3.91–4.53) |" in md


def test_files_of_different_latency_protocols_are_not_merged(tmp_path, linux, mac):
    a, b = write_results(linux, tmp_path / "A.json"), write_results(paper(mac), tmp_path / "B.json")
    with pytest.raises(MNV4Error) as excinfo:
        merge([a, b], tmp_path / "report")
    assert one_line_error(excinfo) == (f"the results files were timed with different --latency protocols ({a}: median, "
                                       f"{b}: paper); merge files timed alike")
    assert not (tmp_path / "report").exists()


def test_a_paper_latency_without_its_statistic_is_refused(tmp_path, linux):
    linux["options"]["latency"] = "paper"
    with pytest.raises(MNV4Error) as excinfo:
        write_results(linux, tmp_path / "results.json")
    assert "latency_ms is missing the key 'median_of_process_means' that its --latency needs" in one_line_error(excinfo)


# ---------------------------------------------------------------------------------------------------------------
# report.html


def test_html_is_one_self_contained_file_with_the_three_plots(tmp_path, linux):
    _, html_path = write_report([linux], tmp_path)
    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    pngs = embedded_pngs(page)
    assert len(pngs) == 3 and all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000 for png in pngs)
    for caption in ("Median latency with p5–p95 whiskers on linux-epyc, batch 1.",
                    "Median latency against relative error", "Images per second against batch size on the GPU."):
        assert f"<figcaption>{caption}" in page
    assert "<td>latency: macOS only</td>" in page and '<td class="status parity-failed">parity-failed</td>' in page
    assert '<td class="num">4.12 (3.91–4.53)</td>' in page


@pytest.mark.parametrize("machine", ["mac", "linux at one batch"])
def test_html_without_a_cuda_sweep_says_why_there_is_no_throughput_plot(tmp_path, mac, linux, machine):
    if machine == "mac":
        data = mac
    else:  # CUDA rows, but at a single batch size: a line needs two points
        data = linux
        data["rows"] = [row for row in data["rows"] if row["batch"] == 1]
    page = write_report([data], tmp_path)[1].read_text()
    assert len(embedded_pngs(page)) == 2
    assert "No throughput-against-batch plot: these results have no CUDA rows measured at more than one batch" in page


def test_without_matplotlib_the_report_is_written_with_its_plots_named_and_not_drawn(tmp_path, linux, monkeypatch):
    # The runtime-only install (mnv4[runtime]) has no matplotlib, and still writes its reports.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    markdown, html = write_report([linux], tmp_path / "report")
    page = html.read_text()
    assert not embedded_pngs(page) and markdown.is_file()
    assert page.count("(not drawn: matplotlib is not installed; pip install 'mnv4[bench]')") >= 2


# ---------------------------------------------------------------------------------------------------------------
# mnv4 report A.json B.json


def test_merging_two_machines_shows_both_machines_and_all_their_rows(tmp_path, linux, mac):
    a, b = write_results(linux, tmp_path / "A.json"), write_results(mac, tmp_path / "B.json")
    md_path, html_path = merge([a, b], tmp_path / "report")
    md, page = md_path.read_text(), html_path.read_text()
    assert md_path == tmp_path / "report" / "report.md" and html_path == tmp_path / "report" / "report.html"
    assert "2 results file(s) from linux-epyc, mac-m3." in md
    assert "| mac-m3 | conv_small | 2026-11-27T21:00:00Z | Apple M3 Pro | 8/16 | neon fp16 |" in md
    assert "| mac-m3 | mnv4 | coreml | coreml | cpu | fp16 | 1 | 1 | ok | 0.980 (0.931–1.078) |" in md
    assert "| linux-epyc | mnv4 | onnx | onnxruntime | cpu | fp32 | 1 | 1 | ok | 4.12 (3.91–4.53) |" in md
    assert "| linux-epyc | mnv4 | coreml | coreml | cpu | fp32 | 1 | 1 | latency-not-measured | latency: macOS only |" in md
    for machine in ("linux-epyc", "mac-m3"):
        assert f"<figcaption>Median latency with p5–p95 whiskers on {machine}, batch 1.</figcaption>" in page
        assert f"<td>{machine}</td>" in page
    assert len(embedded_pngs(page)) == 4  # a latency plot per machine, parity, CUDA throughput


def test_merging_the_same_measurements_twice_is_refused(tmp_path, linux):
    a, b = write_results(linux, tmp_path / "A.json"), write_results(linux, tmp_path / "B.json")
    with pytest.raises(MNV4Error) as excinfo:
        merge([a, b], tmp_path / "report")
    message = one_line_error(excinfo)
    assert message.startswith(f"{b}: linux-epyc conv_small mnv4 torch/torch-eager fp32 1 threads batch 1 is already in {a}")
    assert not (tmp_path / "report").exists()


def test_different_machines_with_the_same_id_are_told_apart(linux, mac):
    mac["machine"]["id"] = "linux-epyc"
    md = render_markdown([linux, mac])
    assert "from linux-epyc, linux-epyc #2." in md
    assert "| linux-epyc #2 | mnv4 | coreml | coreml | cpu | fp16 |" in md
