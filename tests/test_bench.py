"""`mnv4 bench` and `mnv4 report` end to end: real exports, real runtimes, each row measured in its own
process. Timing here only checks that the numbers are consistent, never how fast anything is (speed
claims live in scripts/bench_conv_small.py and docs/bench.md)."""
import json
import subprocess
import sys

import pytest
from test_cli import assert_one_line_error, run_cli

from mnv4.bench.plan import BenchOptions, plan
from mnv4.bench.results import load_results

ITERATIONS = 5


def bench_cli(*args):
    """`mnv4 bench` as users run it; exports and one process per row take minutes, not seconds."""
    return subprocess.run([sys.executable, "-m", "mnv4", "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=1500, check=False)


@pytest.fixture(scope="module")
def onnx_and_torch(tmp_path_factory):
    """conv_small through onnxruntime and PyTorch (eager, channels_last, compile), ours and timm's."""
    output = tmp_path_factory.mktemp("bench")
    result = bench_cli("--variant", "conv_small", "--formats", "onnx,torch", "--precisions", "fp32",
                     "--warmup", "1", "--iterations", str(ITERATIONS), "--compare-timm", "--output-dir", output)
    assert result.returncode == 0, result.stderr
    return output, load_results(output / "results.json")


def rows_by(results, **match):
    return [row for row in results["rows"] if all(row[key] == value for key, value in match.items())]


def test_every_row_is_measured_and_matches_the_reference(onnx_and_torch):
    _, results = onnx_and_torch
    expected = {(source, runtime) for source in ("mnv4", "timm")
                for runtime in ("onnxruntime", "torch-eager", "torch-channels_last", "torch-compile")}
    assert {(row["source"], row["runtime"]) for row in results["rows"]} == expected
    for row in results["rows"]:
        assert row["status"] == "ok", row
        latency = row["latency_ms"]
        assert latency["iterations"] == ITERATIONS
        assert latency["min"] <= latency["p5"] <= latency["median"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert row["load_ms"] > 0 and row["first_inference_ms"] > 0 and row["peak_rss_mb"] > 50
        assert row["throughput_ips"] == pytest.approx(1000 / latency["median"])
        assert row["gflops"] == pytest.approx(2 * results["model"]["macs"] / latency["median"] / 1e6)
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / results["machine"]["fma_peak_gflops_per_thread"])
        if (row["source"], row["runtime"]) == ("mnv4", "torch-eager"):
            assert row["parity"] is None  # the reference itself
        else:
            assert row["parity"]["passed"] and row["parity"]["rel_err"] <= 1e-4
            assert row["parity"]["top1_agreement"] == 1.0


def test_artifact_rows_record_the_export(onnx_and_torch):
    _, results = onnx_and_torch
    for row in rows_by(results, format="onnx"):
        assert row["artifact_bytes"] > 10**6 and row["export_seconds"] > 0


def test_every_mnv4_row_has_its_ratio_to_timm(onnx_and_torch):
    """The ratio comes from two processes timing both call by call (docs/bench.md), so it is not the ratio of
    the two rows' medians; what it must be is there, positive, and only on our rows."""
    _, results = onnx_and_torch
    for ours in rows_by(results, source="mnv4"):
        (peer,) = rows_by(results, source="timm", runtime=ours["runtime"])
        assert ours["ratio_vs_timm"] > 0 and peer["ratio_vs_timm"] is None


def test_machine_and_options_are_recorded(onnx_and_torch):
    output, results = onnx_and_torch
    machine = results["machine"]
    assert machine["logical_cores"] >= 1 and machine["cpu_model"] and machine["fma_peak_gflops_per_thread"] > 1
    assert results["options"]["compare_timm"] is True and results["options"]["threads"] == [1]
    assert results["options"]["command"].startswith("mnv4 bench --variant conv_small")
    assert results["versions"]["onnxruntime"] and results["versions"]["timm"]
    assert "conv_small" in (output / "report.md").read_text()
    assert "data:image/png;base64," in (output / "report.html").read_text()


def test_report_merges_two_machines(onnx_and_torch, tmp_path):
    output, results = onnx_and_torch
    other = json.loads((output / "results.json").read_text())
    other["machine"].update(id="phone-board", hostname="board", cpu_model="Cortex-A78")
    (tmp_path / "board.json").write_text(json.dumps(other))
    result = run_cli("report", output / "results.json", tmp_path / "board.json", "--output-dir", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "merged" / "report.md").read_text()
    assert "phone-board" in markdown and results["machine"]["id"] in markdown and "Cortex-A78" in markdown


def test_a_missing_runtime_is_an_unavailable_row_and_the_rest_goes_on(tmp_path):
    """With litert-torch made unimportable, the TFLite row says which extra to install; ONNX still runs."""
    blocker = tmp_path / "blocked" / "litert_torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('litert_torch is not installed')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(blocker.parent)}
    result = subprocess.run([sys.executable, "-m", "mnv4", "bench", "--formats", "tflite,onnx", "--precisions", "fp32",
                             "--iterations", "2", "--warmup", "0", "--strict", "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=1500, check=False)
    assert result.returncode == 0, result.stderr  # unavailable is not a failure, even with --strict
    rows = {row["format"]: row for row in load_results(tmp_path / "out" / "results.json")["rows"]}
    assert rows["tflite"]["status"] == "unavailable"
    assert rows["tflite"]["reason"] == "unavailable: install mnv4[tflite]" and rows["tflite"]["latency_ms"] is None
    assert rows["onnx"]["status"] == "ok"


def test_strict_fails_on_a_parity_breach(tmp_path):
    """A checkpoint whose head activations exceed float16's range (65504) is fine in float32 and overflows in
    XNNPACK's fp16 arithmetic on every CPU: the row says by how much, and --strict turns it into exit code 1
    while the results are still written. Two processes measure it."""
    import torch
    from safetensors.torch import save_file

    import mnv4

    model = mnv4.create_model("conv_small")
    with torch.no_grad():
        model.conv_head.weight.mul_(1e6)
    weights = tmp_path / "overflowing.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    result = bench_cli("--variant", "conv_small", "--formats", "executorch", "--precisions", "fp16", "--weights",
                       weights, "--iterations", "1", "--warmup", "0", "--repeats", "2", "--strict",
                       "--output-dir", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    (row,) = load_results(tmp_path / "out" / "results.json")["rows"]
    assert row["status"] == "parity-failed" and "cosine" in row["reason"] and row["parity"]["passed"] is False
    assert row["latency_ms"]["iterations"] == 2 and row["latency_ms"]["processes"] == 2  # one call per process
    assert "error: mnv4 executorch/executorch fp16" in result.stderr


@pytest.mark.parametrize("args, fragments", [
    (("--formats", "onnx,pdf"), ("unknown format pdf", "onnx, tflite")),
    (("--variant", "conv_xs"), ("unknown variant 'conv_xs'",)),
    (("--threads", "0"), ("--threads takes positive integers",)),
    (("--batch", "one"), ("comma-separated list of numbers",)),
    (("--device", "tpu"), ("unknown device 'tpu'",)),
    (("--repeats", "0"), ("--repeats must be at least 1",)),
])
def test_bad_bench_options_are_one_line_errors(args, fragments, tmp_path):
    result = run_cli("bench", *args, "--output-dir", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_file_that_is_not_results(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"schema": "other"}))
    assert_one_line_error(run_cli("report", tmp_path / "a.json", "--output-dir", tmp_path), "not an mnv4 bench results")


def test_cuda_rows_without_a_gpu_are_unavailable(tmp_path):
    """This machine has no GPU (the CUDA rows themselves are measured on one: docs/bench.md)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so its CUDA rows are measured rather than unavailable")
    result = bench_cli("--device", "cuda", "--batch", "1,8", "--precisions", "fp16", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = load_results(tmp_path / "results.json")["rows"]
    assert {row["runtime"] for row in rows} == {"torch-eager", "torch-channels_last", "torch-compile",
                                                "torch-cuda-graphs"}
    assert all(row["status"] == "unavailable" and "no CUDA device" in row["reason"] for row in rows)


def test_plan_cuda_rows_sweep_batches_and_modes():
    rows = plan(BenchOptions(variant="conv_small", precisions=("fp32", "fp16", "bf16"), device="cuda",
                             compare_timm=True))
    runtimes = {(row.runtime, row.precision) for row in rows if row.source == "mnv4"}
    assert ("torch-eager", "bf16") in runtimes and ("torch-cuda-graphs", "fp16") in runtimes
    assert ("torch-channels_last", "fp32") in runtimes and ("torch-compile", "fp16") in runtimes
    assert {row.batch for row in rows} == {1, 8, 64, 256} and all(row.threads is None for row in rows)


def test_plan_timm_peers_only_where_timm_has_the_same_path():
    rows = plan(BenchOptions(variant="conv_small", formats=("onnx", "torch"), compare_timm=True))
    assert {(row.source, row.format, row.precision) for row in rows if row.format == "onnx"} == {
        ("mnv4", "onnx", "fp32"), ("mnv4", "onnx", "fp16"), ("timm", "onnx", "fp32")}
    assert {row.precision for row in rows if row.format == "torch"} == {"fp32"}


def test_bench_help_lists_every_option():
    result = run_cli("bench", "--help")
    for option in ("--variant", "--formats", "--precisions", "--threads", "--batch", "--device", "--warmup",
                   "--iterations", "--repeats", "--min-seconds", "--weights", "--resolution", "--compare-timm", "--output-dir",
                   "--strict"):
        assert option in result.stdout
