"""`mnv4 emulate arm64`: ONNX and TFLite artifacts verified and measured by the ARM kernels of their runtimes, on an
x86 machine: `mnv4 verify` per artifact, then `mnv4 bench-artifacts` over all of them, inside the emulated arm64 root
that mnv4.emulation.arm64 provisions, so that onnxruntime's and XNNPACK's aarch64 kernels (NEON, the int8 dot
product, ARMv8.2 float16 arithmetic) compute the logits, judged against the references exported with the artifacts.
qemu translates every instruction, so the latency measured there says nothing of any ARM CPU; the numbers are the ARM
kernels' own."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..artifact.files import claimed, companion_paths, manifest_path, writable_folder, write_json_atomically
from ..artifact.formats import FORMATS
from ..artifact.precisions import FLOAT16_ARITHMETIC, FP16
from ..cache import cache_root
from ..emulation.arm64 import (
    DEFAULT_CPU,
    VENV,
    RootCommand,
    build_mnv4_wheel,
    build_root,
    check_host,
    fetch_wheels,
    last_line,
    runtime_requirements,
    target_of,
)
from ..errors import MNV4Error
from .artifacts import Found, find_artifacts
from .report import write_report
from .results import Status, describe_row, load_results, write_results

# The formats whose aarch64 runtimes install without torch (ExecuTorch's needs an aarch64 torch, which exists only
# as a CUDA build; Core ML's interpreter needs coremltools).
EMULATED_FORMATS = ("onnx", "tflite")
LATENCY_NOTE = ("latency is not representative of any ARM CPU (qemu-user translates every instruction); the numerics "
                "are the ARM kernels' own")
# How `bench-artifacts` times each row in the root: briefly, since no time measured under qemu means anything.
TIMING = ("--warmup", "1", "--iterations", "5")


@dataclass(frozen=True)
class ArtifactRun:
    """One artifact's verdict inside the root: `mnv4 verify --json`'s parity record and exit code."""

    artifact: Path
    format: str
    precision: str
    exit_code: int
    parity: dict

    def problems(self) -> list[str]:
        """Why this artifact's run does not prove what emulation is for, if it does not."""
        name = self.artifact.name
        problems = []
        if not self.parity.get("passed"):
            why = "; ".join(self.parity.get("failures", [])) or f"exit code {self.exit_code}"
            problems.append(f"{name}: parity failed on the ARM kernels ({why})")
        execution = self.parity.get("execution", {})
        if self.format == "tflite" and not execution.get("fully_delegated"):
            problems.append(f"{name}: XNNPACK did not run the whole graph (TFLite's own kernels computed some of it), "
                            f"so these are not XNNPACK's ARM numbers")
        if self.format == "tflite" and self.precision == FP16.name and \
                self.parity.get("tolerance") != FLOAT16_ARITHMETIC.name:
            problems.append(f"{name}: did not run with XNNPACK's forced float16 arithmetic "
                            f"(judged as {self.parity.get('tolerance')!r})")
        return problems

    def summary(self) -> str:
        """One line: the verdict, what ran it, and the worst numbers against PyTorch float32."""
        execution = self.parity.get("execution", {})
        if self.format == "tflite":
            ran = "XNNPACK, whole graph" if execution.get("fully_delegated") else "not all in XNNPACK"
            ran += ", float16 arithmetic" if execution.get("xnnpack_fp16") else ""
        else:
            ran = ", ".join(execution.get("execution_providers", [])) or "onnxruntime"
        worst = self.parity.get("worst")
        numbers = (f": rel err {worst['rel_err']:.2e}, cosine {worst['cosine']:.6f}, top-1 {worst['top1_agreement']:.0%} "
                   f"vs PyTorch fp32 ({self.parity['tolerance']} limits)" if worst else "")
        verdict = "PASS" if self.parity.get("passed") else "FAIL"
        return f"{verdict} {self.artifact.name} ({self.format} {self.precision}; {ran}){numbers}"


@dataclass(frozen=True)
class Emulation:
    output_dir: Path
    results: dict  # results.json of `mnv4 bench-artifacts` in the root, its machine the emulated one
    runs: list[ArtifactRun]

    @property
    def machine(self) -> dict:
        return self.results["machine"]

    def problems(self) -> list[str]:
        """Every artifact's problems, and every bench row that was not measured within parity."""
        problems = [problem for run in self.runs for problem in run.problems()]
        problems += [f"bench row {describe_row(row)}: {row['status']} ({row['reason']})" for row in self.results["rows"]
                     if row["status"] not in (Status.OK, Status.LATENCY_NOT_MEASURED)]
        return problems


# ----------------------------------------------------------------------------------------------------------------
# What to run: refusals before any work


def artifacts_to_run(paths: list[Path]) -> list[Found]:
    """The artifacts named, and the ONNX and TFLite ones in the folders named, checked as `bench-artifacts` checks
    them (a manifest and a stored reference each, one model); refused in one line: none, a file without manifest, a
    format whose aarch64 runtime needs torch, two of one name."""
    if not paths:
        raise MNV4Error("no artifacts given: name ONNX or TFLite artifacts, or folders of them, exported by mnv4")
    suffixes = {FORMATS[name].suffix for name in EMULATED_FORMATS}
    files = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if p.suffix in suffixes and not p.name.startswith(".")
                        and manifest_path(p).is_file())
        if not inside:
            raise MNV4Error(f"{path} holds no ONNX or TFLite artifact with a manifest beside it")
        files += inside
    found = find_artifacts(files)
    for item in found:
        if item.manifest.format not in EMULATED_FORMATS:
            raise MNV4Error(f"{item.path}: {item.manifest.format} artifacts cannot run emulated (only "
                            f"{', '.join(EMULATED_FORMATS)}: their aarch64 runtimes install without torch)")
    names = [item.path.name for item in found]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MNV4Error(f"two artifacts named {repeated[0]}: they would overwrite each other in the root; rename one")
    return found


# ----------------------------------------------------------------------------------------------------------------
# The run


def emulate(architecture: str, paths: list[Path], output_dir: Path, cpu: str = DEFAULT_CPU,
            cache: Path | None = None, progress: Callable[[str], None] = lambda message: None,
            verbose: bool = False) -> Emulation:
    """Verify and bench `paths` (artifacts, or folders of them) on the ARM kernels of their runtimes: `mnv4 verify`
    per artifact, then `mnv4 bench-artifacts` over all of them, inside the emulated root. Writes `output_dir`/
    results.json, report.md and report.html (machine `emulated-<architecture>`) and verify.json (each artifact's
    parity record and exit code)."""
    target = target_of(architecture)
    artifacts = artifacts_to_run(paths)
    check_host(target, cpu)
    cache = writable_folder(cache or cache_root() / "emulate", "the emulation cache")
    with claimed(output_dir, "the output folder"):
        results, runs = _run_in_root(target, architecture, artifacts, cpu, cache, progress, verbose)
        write_results(results, output_dir / "results.json")
        write_report([results], output_dir)
        write_json_atomically([{"artifact": str(run.artifact), "exit_code": run.exit_code, "parity": run.parity}
                               for run in runs], output_dir / "verify.json")
    return Emulation(output_dir, results, runs)


def _run_in_root(target, architecture: str, artifacts: list[Found], cpu: str, cache: Path,
                 progress: Callable[[str], None], verbose: bool) -> tuple[dict, list[ArtifactRun]]:
    """The emulated root (built once), this mnv4 installed in it, each artifact verified and all of them benched
    there: the bench's results (its machine the emulated one) and each artifact's verdict."""
    with tempfile.TemporaryDirectory(prefix="mnv4-emulate-") as scratch:
        progress("building mnv4's wheel from its source tree")
        wheel = build_mnv4_wheel(Path(scratch))
        requirements = runtime_requirements(wheel)
        progress(f"fetching the {target.debian_arch} wheels")
        wheelhouse = fetch_wheels(target, requirements, cache)
        root = build_root(target, wheelhouse, requirements, cache, progress)
        with _run_folder(root) as (host_folder, root_folder):
            shutil.copy2(wheel, host_folder / wheel.name)
            for item in artifacts:
                for companion in companions(item.path):
                    shutil.copy2(companion, host_folder / "artifacts" / companion.name)
            in_root = RootCommand(root, cpu, {"PYTHONPATH": f"{root_folder}/site"})
            progress(f"installing this mnv4 in the root ({wheel.name})")
            in_root.check([f"{VENV}/bin/pip", "install", "--no-index", "--no-deps", "--target", f"{root_folder}/site",
                           f"{root_folder}/{wheel.name}"], "install mnv4 in the root", verbose)
            runs = []
            for item in artifacts:
                progress(f"verifying {item.path.name} on the emulated {cpu}")
                runs.append(_verify(in_root, item, root_folder, verbose))
            progress(f"benchmarking {len(artifacts)} artifact(s) on the emulated {cpu}")
            in_root.check(["python", "-m", "mnv4", "bench-artifacts", f"{root_folder}/artifacts", "--threads", "1",
                           *TIMING, "--xnnpack-fp16", "--machine-name", f"emulated-{architecture}",
                           "--output-dir", f"{root_folder}/out"], "bench the artifacts in the root", verbose)
            qemu = subprocess.run([target.qemu, "--version"], capture_output=True, text=True,
                                  check=False).stdout.splitlines()[0]
            results = load_results(host_folder / "out" / "results.json")
    results["machine"].update(emulated_machine(architecture, cpu, qemu))
    return results, runs


def companions(artifact: Path) -> list[Path]:
    """The artifact and the files named after it: its manifest, its stored reference, an ONNX file's external data,
    the files its export wrote beside it (ncnn's weights)."""
    beside = [p for p in companion_paths(artifact).values() if p.is_file()]
    return [artifact, *sorted(p for p in artifact.parent.glob(f"{artifact.name}.*") if p.is_file()), *beside]


@contextmanager
def _run_folder(root: Path) -> Iterator[tuple[Path, str]]:
    """This run's folder inside the root (its mnv4, artifacts and results), as the host and the root see it; removed
    afterwards."""
    inside = f"/tmp/mnv4-emulate-{os.getpid()}"
    host = root / inside.lstrip("/")
    shutil.rmtree(host, ignore_errors=True)
    (host / "artifacts").mkdir(parents=True)
    try:
        yield host, inside
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _verify(in_root: RootCommand, item: Found, root_folder: str, verbose: bool) -> ArtifactRun:
    manifest = item.manifest
    forced_fp16 = ["--xnnpack-fp16"] if manifest.format == "tflite" and manifest.precision == FP16.name else []
    completed = in_root.run(["python", "-m", "mnv4", "verify", f"{root_folder}/artifacts/{item.path.name}", "--json",
                             *forced_fp16], verbose)
    try:
        parity = json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise MNV4Error(f"mnv4 verify {item.path.name} in the root gave no verdict (exit code "
                        f"{completed.returncode}): {last_line(completed)}") from None
    return ArtifactRun(item.path, manifest.format, manifest.precision, completed.returncode, parity)


def emulated_machine(architecture: str, cpu: str, qemu: str) -> dict:
    """What results.json says of the machine: the emulation, so no report reads its latency as a real CPU's."""
    return {"id": f"emulated-{architecture}", "emulated": True, "emulator": qemu, "qemu_cpu": cpu,
            "cpu_model": f"{cpu} (emulated)", "note": LATENCY_NOTE}
