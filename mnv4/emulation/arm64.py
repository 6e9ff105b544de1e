"""An emulated arm64 machine on an x86 host: a Debian root (debootstrap) that runs under qemu-user through binfmt_misc,
with mnv4's torch-free runtime set (`mnv4[runtime]`) installed from aarch64 wheels fetched on the host, and the mnv4
that runs here installed afresh into every run's own folder. What runs inside it is the bench's (bench/emulated.py).

What each piece is for:
- QEMU_CPU names a real core (cortex-a76): qemu's default model, `max`, made XNNPACK's int8 results wrong.
- A /proc/cpuinfo of that core is bound over the host's: XNNPACK reads it, and the host's x86 one crashes Python.
- Every mount is made in a private mount namespace (`unshare`) around one command in the root, so it ends with that
  command, however the command ends, and no host directory is ever visible inside a root being deleted.
- A root is built under a partial name and renamed when complete; it is keyed by the Debian suite and the wheel set,
  and the mnv4 under test is installed afresh into every run's own folder, so the cached root never changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata, resources
from pathlib import Path

from ..artifact.files import process_running
from ..errors import MNV4Error

SUITE = "bookworm"
DEFAULT_CPU = "cortex-a76"
VENV = "/opt/mnv4"  # inside the root: the runtime set's virtual environment
EXTRA = "runtime"  # mnv4's extra that, with its base requirements, is all `verify` and `bench-artifacts` need
INSTALL_HINT = "apt-get install -y qemu-user-static debootstrap binfmt-support"


@dataclass(frozen=True)
class Target:
    debian_arch: str  # debootstrap --arch
    qemu: str  # the static qemu-user binary
    binfmt: str  # its binfmt_misc entry (binfmt-support's name)
    python: str  # the suite's python3, which the wheels are for
    wheel_platforms: tuple[str, ...]  # pip download --platform, each of them


# Bookworm's glibc is 2.36. pip before 23.3 takes --platform literally, so every manylinux tag it runs is listed.
TARGETS = {"arm64": Target("arm64", "qemu-aarch64-static", "qemu-aarch64", "3.11",
                           (*(f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)), "manylinux2014_aarch64"))}


def target_of(architecture: str) -> Target:
    if architecture not in TARGETS:
        raise MNV4Error(f"unknown architecture {architecture!r}: mnv4 emulates {', '.join(TARGETS)}")
    return TARGETS[architecture]


def check_host(target: Target, cpu: str) -> None:
    """Refused unless this host can emulate `target` on `cpu`: root, qemu-user-static, debootstrap, binfmt_misc for
    qemu (enabled here where it is not)."""
    cpuinfo_asset(cpu)  # refuses a CPU model mnv4 has no /proc/cpuinfo for
    if os.geteuid() != 0:
        raise MNV4Error("mnv4 emulate must run as root: it builds a Debian root, mounts /proc, /sys and /dev in it "
                        "and chroots there")
    for tool, package in ((target.qemu, "qemu-user-static"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            raise MNV4Error(f"{tool} is not installed ({package}): {INSTALL_HINT}")
    models = subprocess.run([target.qemu, "-cpu", "help"], capture_output=True, text=True, check=False).stdout.split()
    if cpu not in models:
        raise MNV4Error(f"{target.qemu} does not emulate CPU {cpu!r}")
    _enable_binfmt(target)


def cpuinfo_asset(cpu: str):
    asset = resources.files("mnv4").joinpath(f"assets/cpuinfo_{cpu.replace('-', '_')}.txt")
    if not asset.is_file():
        shipped = sorted(name.name.removeprefix("cpuinfo_").removesuffix(".txt").replace("_", "-")
                         for name in resources.files("mnv4").joinpath("assets").iterdir()
                         if name.name.startswith("cpuinfo_"))
        raise MNV4Error(f"no /proc/cpuinfo for CPU {cpu!r} ships with mnv4 (XNNPACK reads it to choose its kernels); "
                        f"choose {', '.join(shipped)}")
    return asset


def _enable_binfmt(target: Target) -> None:
    """Register qemu for the target's binaries, as binfmt-support does at boot on a host that runs systemd (a
    container does not): every binary of the root, and every process it starts, then runs under qemu."""
    entry = Path("/proc/sys/fs/binfmt_misc") / target.binfmt
    if entry.is_file() and entry.read_text().startswith("enabled"):
        return
    if shutil.which("update-binfmts") is None:
        raise MNV4Error(f"binfmt_misc does not run {target.binfmt} and update-binfmts is not installed "
                        f"(binfmt-support): {INSTALL_HINT}")
    if not (entry.parent / "register").exists():
        _check(["mount", "-t", "binfmt_misc", "binfmt_misc", str(entry.parent)], "mount binfmt_misc")
    _check(["update-binfmts", "--enable", target.binfmt], f"enable binfmt_misc for {target.binfmt}")


# ----------------------------------------------------------------------------------------------------------------
# The wheels and the root, built once per suite and wheel set


def source_tree() -> Path:
    """The checkout mnv4 runs from: its wheel is built from there on every run."""
    tree = Path(__file__).resolve().parents[2]
    if not (tree / "pyproject.toml").is_file():
        raise MNV4Error(f"mnv4 emulate installs the mnv4 it runs from into the root, built from its source tree; "
                        f"{tree} has no pyproject.toml (install mnv4 from a checkout: pip install -e .)")
    return tree


def build_mnv4_wheel(folder: Path) -> Path:
    """mnv4's wheel, built from a copy of its source tree (setuptools writes build files beside its sources)."""
    tree, sources = source_tree(), folder / "source"
    shutil.copytree(tree / "mnv4", sources / "mnv4", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(tree / name, sources / name)
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder),
            str(sources)], "build mnv4's wheel")
    (wheel,) = folder.glob("mnv4-*.whl")
    return wheel


def runtime_requirements(wheel: Path) -> list[str]:
    """What mnv4 needs without torch: its base requirements and its `runtime` extra, read from the wheel's own
    metadata, each pinned to the version installed here (the one the host's results came from) where it is."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        fields = Parser().parsestr(archive.read(name).decode())
    if EXTRA not in fields.get_all("Provides-Extra", []):
        raise MNV4Error(f"this mnv4 has no `{EXTRA}` extra (pyproject.toml): the root would not know what to install")
    pinned = []
    for requirement in fields.get_all("Requires-Dist", []):
        specifier, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) != EXTRA:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", specifier.strip()).group(0)
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(specifier.strip())
    return sorted(pinned, key=str.lower)


def wheel_set_key(target: Target, requirements: list[str]) -> str:
    text = json.dumps([SUITE, target.python, target.wheel_platforms, requirements])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fetch_wheels(target: Target, requirements: list[str], cache: Path) -> Path:
    """The aarch64 wheels of `requirements` and their dependencies, downloaded once into a cached wheelhouse."""
    wheelhouse = cache / f"wheels-{target.debian_arch}-{wheel_set_key(target, requirements)}"
    if wheelhouse.is_dir():
        return wheelhouse
    with _building(wheelhouse) as partial:
        platforms = [argument for platform in target.wheel_platforms for argument in ("--platform", platform)]
        _check([sys.executable, "-m", "pip", "download", "--dest", str(partial), *platforms, "--python-version",
                target.python, "--only-binary=:all:", *requirements],
               f"download the {target.debian_arch} wheels of {' '.join(requirements)}")
    return wheelhouse


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt already uses for `suite` (deb822 .sources files, then one-line sources.list)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
            fields = {key.strip(): value.split() for key, value in fields.items()}
            if "deb" in fields.get("Types", []) and suite in fields.get("Suites", []) and fields.get("URIs"):
                return fields["URIs"][0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        lines = path.read_text().splitlines() if path.is_file() else []
        for words in (re.sub(r"\[[^]]*\]", "", line).split() for line in lines):
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise MNV4Error(f"apt has no mirror for Debian {suite} (/etc/apt/sources.list, /etc/apt/sources.list.d/): "
                    f"debootstrap builds the root from it")


def build_root(target: Target, wheelhouse: Path, requirements: list[str], cache: Path,
               progress: Callable[[str], None]) -> Path:
    """The cached root for this suite and wheel set, built now if there is none (a few minutes); a root of the same
    target for another wheel set is removed once this one is complete."""
    root = cache / f"root-{SUITE}-{target.debian_arch}-{wheelhouse.name.rsplit('-', 1)[1]}"
    if root.is_dir():
        return root
    mirror = debian_mirror()
    with _building(root) as partial:
        progress(f"building the {target.debian_arch} Debian {SUITE} root from {mirror} (once; a few minutes)")
        _check(["unshare", "--mount", "--propagation", "private", "debootstrap", f"--arch={target.debian_arch}",
                "--variant=minbase", "--include=python3,python3-venv,python3-pip", SUITE, str(partial), mirror],
               "debootstrap the root")
        progress(f"installing {', '.join(requirements)} in the root")
        shutil.copytree(wheelhouse, partial / "tmp" / "wheels")
        in_root = RootCommand(partial, DEFAULT_CPU)
        in_root.check(["python3", "-m", "venv", VENV], "create the root's virtual environment")
        in_root.check([f"{VENV}/bin/pip", "install", "--no-index", "--find-links", "/tmp/wheels", *requirements],
                      "install the runtime set in the root")
        shutil.rmtree(partial / "tmp" / "wheels")
    for stale in cache.glob(f"root-{SUITE}-{target.debian_arch}-*"):
        if stale != root:
            shutil.rmtree(stale)
    return root


@contextmanager
def _building(final: Path) -> Iterator[Path]:
    """A folder built under a partial name and renamed to `final` only when complete; removed on any failure. Partial
    folders of runs that were killed are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        if not process_running(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale)
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Commands inside the root


class RootCommand:
    """Runs commands chrooted in `root` under qemu's `cpu` model, each in its own private mount namespace with /proc,
    /sys, /dev and the core's /proc/cpuinfo mounted, and a clean environment."""

    def __init__(self, root: Path, cpu: str, environment: dict | None = None):
        self.root, self.cpu = root, cpu
        self.environment = {"PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                            "QEMU_CPU": cpu, **(environment or {})}

    def argv(self, command: list[str], cpuinfo: Path) -> list[str]:
        root = str(self.root)
        mounts = [["mount", "-t", "proc", "proc", f"{root}/proc"], ["mount", "-t", "sysfs", "sysfs", f"{root}/sys"],
                  ["mount", "--bind", "/dev", f"{root}/dev"], ["mount", "--bind", str(cpuinfo), f"{root}/proc/cpuinfo"]]
        script = " && ".join(shlex.join(mount) for mount in mounts)
        chroot = ["env", "-i", *(f"{key}={value}" for key, value in self.environment.items()),
                  shutil.which("chroot") or "/usr/sbin/chroot", root, *command]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{script} && exec {shlex.join(chroot)}"]

    def run(self, command: list[str], echo: bool = False) -> subprocess.CompletedProcess:
        with resources.as_file(cpuinfo_asset(self.cpu)) as cpuinfo:
            return _run(self.argv(command, cpuinfo), echo)

    def check(self, command: list[str], what: str, echo: bool = False) -> subprocess.CompletedProcess:
        completed = self.run(command, echo)
        if completed.returncode:
            raise MNV4Error(f"cannot {what} (exit code {completed.returncode}): {last_line(completed)}")
        return completed


def _run(argv: list[str], echo: bool = False) -> subprocess.CompletedProcess:
    """Run `argv` in its own process group, output captured (and shown with `echo`); the whole group is killed if
    this process is interrupted, so nothing it started keeps running."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if echo:
        sys.stderr.write(stderr)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _check(argv: list[str], what: str) -> None:
    completed = _run(argv)
    if completed.returncode:
        raise MNV4Error(f"cannot {what} (exit code {completed.returncode}): {last_line(completed)}")


def last_line(completed: subprocess.CompletedProcess) -> str:
    lines = [line for line in (completed.stderr + completed.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.lstrip().lower().startswith("error")]
    return (errors or lines or ["no output"])[-1].strip()


