"""Faults, third round: a parity tool must never give a false verdict, whatever it is handed. Each class of the issue
has its tests here: concurrent runs, integrity of everything an answer depends on, text from files on a terminal,
files validated before use, bounds in every command and in the Python API, exit 2 for every bad input, and signals,
pipes and --json. Commands run in this process except where a fresh process is the point."""
import json
import signal
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import (
    assert_one_line_error,
    copy_artifact,
    rewrite_manifest,
    run_cli,
    run_without_torch,
    seeded,
)
from PIL import Image

from mnv4.artifact.files import claimed, sha256
from mnv4.artifact.manifest import manifest_path
from mnv4.artifact.reference import reference_path
from mnv4.errors import MNV4Error
from mnv4.text import printable


@pytest.fixture(scope="module")
def onnx(store):
    return store.get("onnx", dynamic_batch=True)


# ------------------------------------------------------------------------------------------ concurrent runs

def test_two_runs_into_one_output_folder_the_second_is_refused(onnx, tmp_path):
    """A second process (the point: a claim is per process) is refused before any work."""
    output = tmp_path / "out"
    with claimed(output, "the output folder"):  # another run, busy writing there
        result = run_cli("bench-artifacts", onnx, "--iterations", 1, "--warmup", 0, "--output-dir", output)
    assert_one_line_error(result, f"the output folder {output} is being written by another mnv4 run")
    assert not (output / "results.json").exists()


def test_measurements_at_once_in_one_folder_each_read_their_own_logits(store, tmp_path):
    """Two worker processes at once in one work folder (as two benches sharing --output-dir did): each row's
    logits are its own artifact's (1000 classes, and the fixture's 10), never the other's."""
    from mnv4.bench.measure import run_worker
    from mnv4.bench.worker import Timing, WorkerJob
    from mnv4.runtimes import load

    reference = seeded("conv_small")
    np.save(tmp_path / "inputs.npy", reference.inputs)
    artifacts = [store.get("onnx", dynamic_batch=True), store.get("onnx", fixture=True, precision="int8",
                                                                    dynamic_batch=True)]
    jobs = [WorkerJob(inputs=str(tmp_path / "inputs.npy"), timing=Timing(0, 1), path=str(path)) for path in artifacts]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda job: run_worker(job, 1, tmp_path), jobs))
    for path, (result, logits, _) in zip(artifacts, outcomes):
        assert "status" not in result, result
        np.testing.assert_allclose(logits, load(path)(reference.inputs), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.npy"]  # the private folders are gone


# ---------------------------------------------------------------------------------------------- integrity

@pytest.mark.parametrize("field, change, allowed_code", [
    ("preprocessing", lambda d: d["preprocessing"].update(mean=[0.1, 0.2, 0.3]), 0),
    ("variant", lambda d: d.update(variant="hybrid_medium"), 0),
    ("labels", lambda d: d.update(labels=[f"class {i}" for i in range(d["num_classes"])]), 0),
    ("resolution", lambda d: d.update(resolution=96), 2),  # taken as it is, the input is not the artifact's size
])
def test_a_manifest_changed_after_export_is_refused_unless_the_user_says(field, change, allowed_code, onnx, cat_photo,
                                                                          tmp_path, cli):
    artifact = copy_artifact(onnx, tmp_path)
    rewrite_manifest(artifact, change, seal=False)  # by hand, as a careless or hostile user would
    for result in (cli("run", artifact, cat_photo), cli("verify", artifact), cli("bench-artifacts", artifact.parent,
                                                                                  "--output-dir", tmp_path / "out")):
        assert_one_line_error(result, f"manifest {manifest_path(artifact)}: it was changed after export",
                              "--allow-modified")
    allowed = cli("run", artifact, cat_photo, "--allow-modified", "--top", 1)
    assert allowed.returncode == allowed_code, allowed.stderr
    assert allowed.stderr.startswith("warning: ") and "changed after export" in allowed.stderr


def test_a_manifest_without_integrity_record_is_read_only_when_the_user_says(onnx, tmp_path, cli):
    artifact = copy_artifact(onnx, tmp_path)
    rewrite_manifest(artifact, lambda d: d.pop("integrity"), seal=False)
    assert_one_line_error(cli("verify", artifact), "it has no integrity record", "--allow-modified")
    allowed = cli("verify", artifact, "--allow-modified")
    assert allowed.returncode == 0 and "PASS" in allowed.stderr, allowed.stderr


def test_an_onnx_with_weights_in_a_file_beside_it_is_not_loaded(onnx, cat_photo, tmp_path, cli):
    """What runs is the one file whose sha256 the manifest records: a model that reads its weights from external
    data (whose swap went unnoticed) does not load."""
    import onnx as onnx_package

    artifact = copy_artifact(onnx, tmp_path)
    model = onnx_package.load(str(artifact))
    onnx_package.save_model(model, str(artifact), save_as_external_data=True, location="weights.data",
                            size_threshold=0)
    assert (tmp_path / "weights.data").stat().st_size > 10**6
    rewrite_manifest(artifact, lambda manifest: manifest.update(sha256=sha256(artifact)))
    for result in (cli("run", artifact, cat_photo), cli("verify", artifact)):
        assert_one_line_error(result, "onnxruntime cannot load", artifact.name)


# ------------------------------------------------------------------------------------------- text from files

@pytest.mark.parametrize("name", ["apple\x1b]0;pwned\x07", "a\x1b[2Jb", "grape\u202eelppa", "fig\rbanana"])
def test_class_names_with_control_or_bidirectional_characters_are_refused(name, tmp_path, cli):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["apple", name, "cherry"]), encoding="utf-8")
    result = cli("export", "--format", "onnx", "--labels", labels, "--output", tmp_path / "m.onnx")
    assert_one_line_error(result, f"--labels {labels} line 2 holds a control or bidirectional character")
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_a_labels_files_bom_and_windows_line_ends_are_not_part_of_the_names(tmp_path):
    from mnv4.export.pipeline import read_labels

    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffpomme\r\nbanane\r\nnaïve 👩‍👩‍👧 مرحبا\r\n".encode())
    assert read_labels(labels) == ["pomme", "banane", "naïve 👩‍👩‍👧 مرحبا"]


def test_text_from_files_is_shown_escaped_and_unicode_names_as_they_are():
    assert printable("a\x1b[2Jb\u202ec\nd") == "a\\x1b[2Jb\\u202ec\\nd"
    assert printable("naïve 👩‍👩‍👧 مرحبا") == "naïve 👩‍👩‍👧 مرحبا"  # joiners and right-to-left letters stay


def test_a_file_name_with_escape_sequences_reaches_the_terminal_escaped(onnx, tmp_path, cli):
    artifact = copy_artifact(onnx, tmp_path / "a\x1b[2Jb")
    result = cli("verify", artifact.parent / "missing\x1b]0;x\x07.onnx")
    assert result.returncode == 2 and "\x1b" not in result.stderr and "\\x1b" in result.stderr
    assert cli("verify", artifact).returncode == 0


# ------------------------------------------------------------------------------ files validated before use

@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["preprocessing"].update(std=[0, 0, 0]), "bad value for 'std'"),
    (lambda d: d["preprocessing"].update(interpolation="lanczos"), "bad value for 'interpolation'"),
    (lambda d: d["preprocessing"].update(crop_pct=0), "bad value for 'crop_pct'"),
    (lambda d: d.update(resolution=10**6), "bad value for 'resolution'"),
    (lambda d: d.update(batch=10**12), "bad value for 'batch'"),
    (lambda d: d.update(num_classes=-3), "bad value for 'num_classes'"),
    (lambda d: d.update(labels=["a", "b"]), "2 names for 1000 classes"),
    (lambda d: d.update(labels=["x\x1b[2J"] * 1000), "bad value for 'labels'"),
    (lambda d: d["weights"].update(kind="magic"), "bad value for 'kind'"),
    (lambda d: d.update(reference={"file": "r.npz"}), "is missing the key 'sha256'"),
    (lambda d: d.update(companions={"required_operators": {"file": "m.config", "sha256": "0"}}),
     "(companion 'required_operators') has a bad value for 'sha256'"),
])
def test_every_manifest_field_is_checked_before_use(change, fragment, onnx, cat_photo, tmp_path, cli):
    """Even in a manifest sealed as if its export had written it: the schema, not the integrity record, refuses."""
    artifact = copy_artifact(onnx, tmp_path)
    rewrite_manifest(artifact, change)
    for result in (cli("run", artifact, cat_photo), cli("verify", artifact)):
        assert_one_line_error(result, f"manifest {manifest_path(artifact)}", fragment)


@pytest.mark.parametrize("text, fragment", [
    ('{"schema": NaN}', "holds NaN, which JSON has no place for"),
    ('{"schema": Infinity}', "holds Infinity"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("\xff\xfe", "is not UTF-8 text"),
])
def test_a_manifest_that_json_cannot_hold_is_refused(text, fragment, onnx, tmp_path, cli):
    artifact = copy_artifact(onnx, tmp_path)
    manifest_path(artifact).write_bytes(text.encode("latin-1") if text == "\xff\xfe" else text.encode())
    assert_one_line_error(cli("verify", artifact), f"manifest {manifest_path(artifact)}", fragment)


def npy_header(shape: tuple, dtype: str) -> bytes:
    """A .npy file that declares `shape` and holds no data."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_a_reference_that_declares_a_huge_array_is_refused_before_it_is_loaded(onnx, tmp_path, cli):
    artifact = copy_artifact(onnx, tmp_path)
    with np.load(reference_path(artifact)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    with zipfile.ZipFile(reference_path(artifact), "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                if name == "inputs":  # 20 GB, declared
                    member.write(npy_header((10**5, 3, 64, 64 * 256), "float32"))
                else:
                    np.lib.format.write_array(member, array)
    rewrite_manifest(artifact, lambda manifest: manifest["reference"].update(sha256=sha256(reference_path(artifact))))
    assert_one_line_error(cli("verify", artifact), f"the stored reference {reference_path(artifact)}",
                          "100000 inputs")


@pytest.mark.parametrize("change, fragment", [
    (lambda results: results["rows"][0]["latency_ms"].update(median="fast"), "bad value for 'median'"),
    (lambda results: results["rows"][0].update(batch=-1), "bad value for 'batch'"),
    (lambda results: results["machine"].update(id=["a"]), "bad value for 'id'"),
    (lambda results: results.update(rows={}), "bad value for 'rows'"),
])
def test_a_results_file_of_the_wrong_types_is_refused_by_report(change, fragment, tmp_path, cli):
    from test_report import results, row

    document = results("box", [row("onnx", "onnxruntime", 4.0)])
    change(document)
    (tmp_path / "a.json").write_text(json.dumps(document))
    assert_one_line_error(cli("report", tmp_path / "a.json", "--output-dir", tmp_path / "r"), str(tmp_path / "a.json"),
                          fragment)
    assert not (tmp_path / "r").exists()


def test_a_results_file_with_nan_is_refused_and_mnv4_never_writes_one(tmp_path, cli):
    from test_report import results, row

    from mnv4.bench.results import load_results, write_results

    (tmp_path / "a.json").write_text('{"schema": "mnv4-bench/1", "rows": [NaN]}')
    assert_one_line_error(cli("report", tmp_path / "a.json"), "holds NaN")
    document = results("box", [row("onnx", "onnxruntime", 4.0)])
    document["rows"][0]["ratio_vs_timm"] = float("inf")
    assert load_results(write_results(document, tmp_path / "b.json"))["rows"][0]["ratio_vs_timm"] is None


# ---------------------------------------------------------------------- bounds in every command and the API

@pytest.mark.parametrize("args, fragment", [
    (("--threads", "300"), "--threads must be from 1 to 256, got 300"),
    (("--max-accuracy-loss", "nan"), "--max-accuracy-loss must be from 0 to 100, got nan"),
    (("--max-accuracy-loss", "-5"), "got -5"),
    (("--max-accuracy-loss", "1e9"), "got 1e+09"),
])
def test_verify_bounds_its_options_as_export_does(args, fragment, onnx, cli):
    assert_one_line_error(cli("verify", onnx, *args), fragment)


def test_a_machine_name_is_text_and_a_dollar_in_it_is_no_tex(onnx, tmp_path, cli):
    assert_one_line_error(cli("bench-artifacts", onnx, "--machine-name", "a\x1b[2J", "--output-dir", tmp_path / "x"),
                          "--machine-name must be a text")
    result = cli("bench-artifacts", onnx, "--machine-name", "cost $5 $x^2$", "--iterations", 1, "--warmup", 0,
                 "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "cost $5 $x^2$" in (tmp_path / "out" / "report.html").read_text()


def test_the_python_api_bounds_what_the_cli_bounds(onnx):
    import mnv4
    from mnv4.runtimes import load

    with pytest.raises(MNV4Error, match="--threads must be from 1 to 256, got -1"):
        load(onnx, threads=-1)
    with pytest.raises(MNV4Error, match="num_classes must be an integer from 0"):
        mnv4.create_model("conv_small", num_classes=-3)
    with pytest.raises(MNV4Error, match="in_chans must be an integer from 1"):
        mnv4.create_model("conv_small", in_chans=0)
    runner = load(onnx)
    for shape in ((3, 64, 64), (1, 4, 64, 64), (2, 3, 32, 32)):
        with pytest.raises(MNV4Error, match=r"takes NCHW batches of shape \(N, 3, 64, 64\), not an array"):
            runner(np.zeros(shape, np.float32))


# ------------------------------------------------------------------------------------ exit 2 for bad input

def test_an_image_too_thin_to_classify_is_refused_before_it_is_decoded(onnx, tmp_path, cli):
    Image.fromarray(np.zeros((1, 300_000), np.uint8)).save(tmp_path / "thin.png")
    assert_one_line_error(cli("run", onnx, tmp_path / "thin.png"), "thin.png: it is 300000 x 1 px")
    (tmp_path / "calibration").mkdir()
    Image.fromarray(np.zeros((1, 300_000), np.uint8)).save(tmp_path / "calibration" / "thin.png")
    assert_one_line_error(cli("export", "--format", "onnx", "--precision", "int8", "--calibration",
                              tmp_path / "calibration", "--output", tmp_path / "m.onnx"), "300000 x 1 px")


def test_an_onnx_that_loads_and_fails_when_run_is_a_damaged_artifact(onnx, cat_photo, tmp_path, cli):
    import onnx as onnx_package
    from onnx import TensorProto, helper

    artifact = copy_artifact(onnx, tmp_path)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [7, -1])  # 3 * 64 * 64 values do not split by 7
    graph = helper.make_graph([helper.make_node("Reshape", ["pixels", "shape"], ["logits"])], "broken",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [shape])
    onnx_package.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(artifact))
    rewrite_manifest(artifact, lambda manifest: manifest.update(sha256=sha256(artifact)))
    assert_one_line_error(cli("run", artifact, cat_photo), f"onnxruntime cannot run {artifact.name}")


def test_without_torch_an_executorch_artifact_is_a_missing_runtime_and_an_unavailable_row(store, tmp_path):
    folder = tmp_path / "artifacts"
    program = copy_artifact(store.get("executorch"), folder)
    copy_artifact(store.get("tflite"), folder)
    assert_one_line_error(run_without_torch("verify", program), "ExecuTorch's runtime", "mnv4[executorch]")
    result = run_without_torch("bench-artifacts", folder, "--iterations", 1, "--warmup", 0, "--output-dir",
                               tmp_path / "out")
    assert result.returncode == 0, result.stderr
    rows = {row["format"]: row for row in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    assert rows["executorch"]["status"] == "unavailable" and "mnv4[executorch]" in rows["executorch"]["reason"]
    assert rows["tflite"]["status"] == "ok"


def test_coreml_compare_without_torch_says_what_it_needs(store):
    assert_one_line_error(run_without_torch("coreml-compare", store.get("coreml")), "Core ML predictions need macOS")


def test_a_corrupt_cached_fixture_is_trained_again_and_an_unwritable_cache_refused_at_once(tmp_path, monkeypatch,
                                                                                          cli):
    from mnv4.model.task import TASK, Recipe, cache_dir, task_of, trained_fixture

    monkeypatch.setenv("MNV4_CACHE", str(tmp_path / "cache"))
    recipe = Recipe("conv_small", epochs=1, resolution=32)
    path = cache_dir() / f"{TASK}-conv_small-r32-{recipe.key()}.safetensors"  # where it is cached
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    assert trained_fixture("conv_small", recipe) == path and task_of(path) == "digits"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MNV4_CACHE", str(tmp_path / "file"))
    assert_one_line_error(cli("fixture"), f"cannot write to the fixture cache {tmp_path / 'file' / 'fixtures'}")


# ------------------------------------------------------------------------------ signals, pipes and --json

def test_an_eof_inside_a_command_is_bad_input_not_an_interruption(monkeypatch, cli):
    import mnv4.model.profile

    def truncated(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(mnv4.model.profile, "summary", truncated)
    result = cli("info", "--variant", "conv_small")
    assert_one_line_error(result, "an input ended before it should have (EOFError: Ran out of input)")
    assert "interrupted" not in result.stderr


def test_a_signal_that_leaves_an_object_half_built_is_still_one_line(monkeypatch, cli):
    """A signal inside a library's constructor (imageio's plugin, mid-__init__ while the photos load) leaves an object
    whose __del__ fails as the stack unwinds: the user who stopped the command sees the one line, not that noise."""
    import os

    import mnv4.model.profile

    class HalfBuilt:
        def __init__(self):
            os.kill(os.getpid(), signal.SIGINT)  # arrives before the attribute below is set
            self.images_to_write = []

        def __del__(self):
            len(self.images_to_write)

    monkeypatch.setattr(mnv4.model.profile, "summary", lambda *args, **kwargs: HalfBuilt())
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, not pytest's, as in a process
    result = cli("info", "--variant", "conv_small")
    assert result.returncode == 128 + signal.SIGINT
    assert result.stderr.strip().splitlines() == ["error: interrupted by SIGINT"], result.stderr


def test_a_closed_pipe_ends_quietly(onnx, cat_photo):
    process = subprocess.Popen([sys.executable, "-m", "mnv4", "run", str(onnx), str(cat_photo)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGPIPE and stderr == b""


@pytest.mark.parametrize("args, code", [(("export", "--format", "onnx", "--nhwc", "--json"), 2),
                                        (("verify", "absent.onnx", "--json"), 2)])
def test_json_is_one_document_on_every_path(args, code, cli):
    result = cli(*args)
    assert result.returncode == code
    document = json.loads(result.stdout)
    assert document["exit_code"] == code and document["error"] in result.stderr


def test_a_parity_failure_with_json_prints_the_record_and_no_second_document(onnx, tmp_path, cli):
    artifact = copy_artifact(onnx, tmp_path)
    rewrite_manifest(artifact, lambda manifest: manifest["weights"].update(seed=1))
    result = cli("verify", artifact, "--reference", "model", "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["passed"] is False


def test_verify_of_the_same_artifact_from_two_shells_at_once(onnx):
    """Reading is never refused: two `mnv4 verify` of one artifact at once both pass."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: run_cli("verify", onnx), range(2)))
    assert [result.returncode for result in results] == [0, 0], [result.stderr for result in results]
