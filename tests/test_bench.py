"""`mnv4 bench` and `mnv4 report` end to end: real exports, real runtimes, each row measured in its own process.
Timing here only checks that the numbers are consistent, never how fast anything is (speed claims live in
scripts/bench_conv_small.py and docs/bench.md).

One round trip covers what a bench does: the trained fixture exported at two precisions to two formats, PyTorch's
eager (the reference), channels-last and torch.compile rows, a format whose toolchain is missing, every row judged
with its held-out accuracy, int8's speed-up, --strict, results.json and both reports. A second, smaller one covers
timm's twins and repeated processes."""
import json
import os

import pytest
from conftest import assert_one_line_error, copy_artifact, rewrite_manifest, run_cli, trained

from mnv4.artifact.reference import Reference, read_reference
from mnv4.bench.plan import BenchOptions, plan
from mnv4.bench.results import Status, load_results

ITERATIONS = 3


def rows_by(results, **match):
    return [row for row in results["rows"] if all(row[key] == value for key, value in match.items())]


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """The fixture through ONNX and TFLite at fp32 and int8, and PyTorch; ExecuTorch's toolchain made unimportable
    (a stand-in package that raises ImportError), as on a machine without it. A fresh process: the blocker is put on
    its PYTHONPATH."""
    folder = tmp_path_factory.mktemp("bench")
    blocker = folder / "blocked" / "executorch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('executorch is not installed')\n")
    result = run_cli("bench", "--formats", "onnx,tflite,executorch,torch", "--precisions", "fp32,int8", "--weights",
                     trained(), "--resolution", 64, "--warmup", 1, "--iterations", ITERATIONS, "--strict",
                     "--output-dir", folder / "out", env={**os.environ, "PYTHONPATH": str(blocker.parent)})
    assert result.returncode == 0, result.stderr  # unavailable is not a failure, even with --strict
    return folder / "out", load_results(folder / "out" / "results.json"), result


def test_every_row_is_measured_and_judged_with_the_fixtures_accuracy(round_trip):
    _, results, _ = round_trip
    measured = {(row["format"], row["runtime"], row["precision"]) for row in results["rows"]
                if row["status"] == Status.OK}
    assert measured == {("onnx", "onnxruntime", "fp32"), ("onnx", "onnxruntime", "int8"), ("tflite", "litert", "fp32"),
                        ("tflite", "litert", "int8"), ("torch", "torch-eager", "fp32"),
                        ("torch", "torch-channels_last", "fp32"), ("torch", "torch-compile", "fp32")}
    for row in rows_by(results, status=Status.OK):
        latency = row["latency_ms"]
        assert latency["iterations"] == ITERATIONS and latency["processes"] == 1
        assert latency["min"] <= latency["p5"] <= latency["median"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert row["load_ms"] > 0 and row["first_inference_ms"] > 0 and row["peak_rss_mb"] > 50
        assert row["throughput_ips"] == pytest.approx(1000 / latency["median"])
        assert row["gflops"] == pytest.approx(2 * results["model"]["macs"] / latency["median"] / 1e6)
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / results["machine"]["fma_peak_gflops_per_thread"])
        if row["runtime"] == "torch-eager":
            assert row["parity"] is None  # the reference itself
            continue
        task = row["parity"]["task"]
        assert task["held_out"] == 449 and task["passed"] is True and task["top1"]["artifact"] >= 0.9
        assert task["top1_agreement_with_fp32"] >= 0.98 and row["parity"]["passed"] is True
        if row["format"] != "torch":
            assert row["artifact_bytes"] > 10**5 and row["export_seconds"] > 0
    assert {row["parity"]["tolerance"] for row in rows_by(results, precision="int8", status=Status.OK)} == {"int8"}


def test_int8_rows_carry_their_speed_up_over_fp32(round_trip):
    """The speed-up is the two medians of this run (no claim about its size: that is the benchmark's)."""
    output, results, _ = round_trip
    for fmt in ("onnx", "tflite"):
        (fp32,), (int8,) = rows_by(results, format=fmt, precision="fp32"), rows_by(results, format=fmt, precision="int8")
        assert fp32["speedup_vs_fp32"] is None
        assert int8["speedup_vs_fp32"] == pytest.approx(fp32["latency_ms"]["median"] / int8["latency_ms"]["median"])
    assert "vs fp32" in (output / "report.md").read_text()


def test_a_missing_toolchain_is_an_unavailable_row_and_the_rest_goes_on(round_trip):
    _, results, _ = round_trip
    rows = rows_by(results, format="executorch")
    assert {row["precision"] for row in rows} == {"fp32", "int8"}
    for row in rows:
        assert row["status"] == Status.UNAVAILABLE and row["reason"] == "unavailable: install mnv4[executorch]"
        assert row["latency_ms"] is None


def test_machine_options_and_reports_are_written(round_trip, tmp_path):
    output, results, printed = round_trip
    machine = results["machine"]
    assert machine["logical_cores"] >= 1 and machine["cpu_model"] and machine["fma_peak_gflops_per_thread"] > 1
    assert results["options"]["threads"] == [1] and results["options"]["resolution"] == 64
    assert results["options"]["command"].startswith("mnv4 bench --formats onnx,tflite,executorch,torch")
    assert results["options"]["weights_facts"]["kind"] == "checkpoint"
    assert results["versions"]["onnxruntime"] and results["versions"]["torch"]
    assert "conv_small" in (output / "report.md").read_text()
    assert "data:image/png;base64," in (output / "report.html").read_text()
    assert f"{len(results['rows'])} rows, 7 ok" in printed.stderr
    # Another machine's results merge into one report.
    other = json.loads((output / "results.json").read_text())
    other["machine"].update(id="phone-board", hostname="board", cpu_model="Cortex-A78")
    (tmp_path / "board.json").write_text(json.dumps(other))
    merged = run_cli("report", output / "results.json", tmp_path / "board.json", "--output-dir", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
    markdown = (tmp_path / "merged" / "report.md").read_text()
    assert "phone-board" in markdown and machine["id"] in markdown and "Cortex-A78" in markdown


def test_timm_twins_and_repeated_processes(tmp_path, cli):
    """ONNX ours and timm's, two processes each: the ratio comes from two processes timing both call by call
    (docs/bench.md), so it is not the ratio of the two rows' medians; what it must be is there, positive, and only on
    our rows; latency pools both processes' calls."""
    result = cli("bench", "--formats", "onnx", "--precisions", "fp32", "--resolution", 64, "--warmup", 0,
                 "--iterations", 2, "--repeats", 2, "--compare-timm", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    results = load_results(tmp_path / "results.json")
    (ours,), (peer,) = rows_by(results, source="mnv4"), rows_by(results, source="timm")
    for row in ours, peer:
        assert row["status"] == Status.OK and row["parity"]["passed"] and row["parity"]["top1_agreement"] == 1.0
        assert row["latency_ms"]["iterations"] == 4 and row["latency_ms"]["processes"] == 2
    assert ours["ratio_vs_timm"] > 0 and peer["ratio_vs_timm"] is None
    assert results["options"]["compare_timm"] is True and results["versions"]["timm"]


def test_strict_fails_on_a_parity_breach_and_still_writes_the_results(store, tmp_path, cli):
    """An artifact judged by another model's reference (its logits' classes rotated) is measured, its row says by how
    much parity fails, and --strict turns that into exit code 1 after the results are written."""
    import numpy as np

    from mnv4.artifact.files import sha256
    from mnv4.artifact.manifest import read_manifest
    from mnv4.artifact.reference import reference_path

    impostor = copy_artifact(store.get("onnx", dynamic_batch=True), tmp_path / "artifacts")
    stored = read_reference(impostor, read_manifest(impostor))
    Reference(stored.inputs, stored.photos, np.roll(stored.pytorch_fp32, 1, axis=1),
              np.roll(stored.float64, 1, axis=1)).write(impostor)
    rewrite_manifest(impostor, lambda manifest: manifest["reference"].update(sha256=sha256(reference_path(impostor))))
    result = cli("bench-artifacts", impostor.parent, "--warmup", 0, "--iterations", 1, "--strict",
                 "--output-dir", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    (row,) = load_results(tmp_path / "out" / "results.json")["rows"]
    assert row["status"] == Status.PARITY_FAILED and "relative error" in row["reason"] and row["parity"]["passed"] is False
    assert "error: mnv4 onnx/onnxruntime fp32 1 threads batch 1: parity-failed" in result.stderr


@pytest.mark.matrix
def test_strict_fails_on_a_real_fp16_overflow(tmp_path, cli):
    """A checkpoint whose head activations exceed float16's range (65504) is fine in float32 and overflows in
    XNNPACK's fp16 arithmetic on every CPU: the row says by how much, and --strict turns it into exit code 1."""
    import torch
    from safetensors.torch import save_file

    import mnv4

    model = mnv4.create_model("conv_small")
    with torch.no_grad():
        model.conv_head.weight.mul_(1e6)
    weights = tmp_path / "overflowing.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    result = cli("bench", "--formats", "executorch", "--precisions", "fp16", "--weights", weights, "--iterations", 1,
                 "--warmup", 0, "--strict", "--output-dir", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    (row,) = load_results(tmp_path / "out" / "results.json")["rows"]
    assert row["status"] == Status.PARITY_FAILED and "cosine" in row["reason"] and row["parity"]["passed"] is False


def test_cuda_rows_without_a_gpu_are_unavailable(tmp_path, cli):
    """This machine has no GPU (the CUDA rows themselves are measured on one: docs/bench.md)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so its CUDA rows are measured rather than unavailable")
    result = cli("bench", "--device", "cuda", "--batch", "1,8", "--precisions", "fp16", "--resolution", 64,
                 "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = load_results(tmp_path / "results.json")["rows"]
    assert {row["runtime"] for row in rows} == {"torch-eager", "torch-channels_last", "torch-compile",
                                                "torch-cuda-graphs"}
    assert all(row["status"] == Status.UNAVAILABLE and "no CUDA device" in row["reason"] for row in rows)


@pytest.mark.parametrize("args, fragments", [
    (("--formats", "onnx,pdf"), ("unknown format 'pdf'", "onnx, tflite")),
    (("--variant", "conv_xs"), ("unknown variant 'conv_xs'",)),
    (("--threads", "0"), ("--threads takes integers from 1 to 256",)),
    (("--threads", "1,1"), ("--threads names a value twice",)),
    (("--batch", "one"), ("comma-separated list of numbers",)),
    (("--device", "tpu"), ("unknown device 'tpu'",)),
    (("--repeats", "0"), ("--repeats must be at least 1",)),
    (("--min-seconds", "nan"), ("--min-seconds must be a positive number",)),
    (("--xnnpack-fp16",), ("--xnnpack-fp16 go with `mnv4 bench-artifacts PATHS`",)),
    (("--runtimes", "litert-gpu16"), ("unknown runtime 'litert-gpu16'", "did you mean 'litert-gpu'")),
    (("--formats", "onnx,torch", "--runtimes", "cpu,litert-gpu"), ("runtime litert-gpu runs TFLite artifacts",
                                                                    "add tflite to --formats")),
])
def test_bad_bench_options_are_one_line_errors_before_any_work(args, fragments, tmp_path, cli):
    result = cli("bench", *args, "--output-dir", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["bench", "bench-artifacts"])
def test_a_bad_latency_protocol_is_a_one_line_error(command, tmp_path, cli):
    result = cli(command, *([tmp_path] if command == "bench-artifacts" else []), "--latency", "mean",
                 "--output-dir", tmp_path / "out")
    assert_one_line_error(result, "--latency takes median or paper, got 'mean'")
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_file_that_is_not_results(tmp_path, cli):
    (tmp_path / "a.json").write_text(json.dumps({"schema": "other"}))
    assert_one_line_error(cli("report", tmp_path / "a.json", "--output-dir", tmp_path), "not an mnv4 bench results")


def test_plan_cuda_rows_sweep_batches_and_modes():
    rows = plan(BenchOptions(variant="conv_small", precisions=("fp32", "fp16", "bf16"), device="cuda",
                             compare_timm=True))
    runtimes = {(row.runtime, row.precision) for row in rows if row.source == "mnv4"}
    assert ("torch-eager", "bf16") in runtimes and ("torch-cuda-graphs", "fp16") in runtimes
    assert ("torch-channels_last", "fp32") in runtimes and ("torch-compile", "fp16") in runtimes
    assert ("torch-compile", "bf16") not in runtimes
    assert {row.batch for row in rows} == {1, 8, 64, 256} and all(row.threads is None for row in rows)


def test_plan_timm_peers_only_where_timm_has_the_same_path():
    rows = plan(BenchOptions(variant="conv_small", formats=("onnx", "torch"), compare_timm=True))
    assert {(row.source, row.format, row.precision) for row in rows if row.format == "onnx"} == {
        ("mnv4", "onnx", "fp32"), ("mnv4", "onnx", "fp16"), ("timm", "onnx", "fp32")}
    assert {row.precision for row in rows if row.format == "torch"} == {"fp32"}


def test_plan_runs_each_format_in_the_runtimes_named():
    """cpu is each format's own runtime; the others run their own format's artifacts alone, the timm twin beside."""
    rows = plan(BenchOptions(variant="conv_small", formats=("onnx", "tflite"), precisions=("fp32", "int8"),
                             runtimes=("cpu", "litert-gpu", "ort-web-wasm"), compare_timm=True))
    assert {(row.source, row.format, row.runtime, row.precision) for row in rows} == {
        (source, fmt, runtime, precision) for fmt, runtimes in (("onnx", ("onnxruntime", "ort-web-wasm")),
                                                                ("tflite", ("litert", "litert-gpu")))
        for runtime in runtimes for precision in ("fp32", "int8") for source in ("mnv4", "timm")
        if source == "mnv4" or precision == "fp32"}
    # Each row says what computes it: the GPU delegate's rows are gpu rows, the browser's WebAssembly a CPU's.
    assert {(row.runtime, row.device) for row in rows} == {("onnxruntime", "cpu"), ("ort-web-wasm", "cpu"),
                                                           ("litert", "cpu"), ("litert-gpu", "gpu")}
    rows = plan(BenchOptions(variant="conv_small", formats=("onnx", "tflite"), runtimes=("litert-gpu-fp32",)))
    assert {(row.format, row.runtime, row.runtime_row) for row in rows} == {("tflite", "litert-gpu-fp32",
                                                                            "litert-gpu-fp32")}


def test_bench_help_lists_every_option(cli):
    result = cli("bench", "--help")
    for option in ("--variant", "--formats", "--precisions", "--threads", "--batch", "--device", "--warmup",
                   "--iterations", "--repeats", "--min-seconds", "--weights", "--resolution", "--compare-timm",
                   "--output-dir", "--strict", "--runtimes"):
        assert option in result.stdout
