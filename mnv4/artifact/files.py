"""File helpers for artifacts: checksums, sizes, removal and publish-after-verify.

An artifact is written under a hidden partial name beside its output and moved into place only after it
exported and verified, so a failed or interrupted export leaves nothing at the output path."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import MNV4Error
from .formats import Format


def sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory (an .mlpackage) as its sorted relative paths and contents."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def artifact_bytes(path: str | Path) -> int:
    """Size on disk of a file, or of all the files of a directory artifact."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def remove_artifact(path: str | Path) -> None:
    """Remove a file or a directory artifact; nothing there is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def partial_path(output: Path, pid: int | None = None) -> Path:
    """The hidden name an artifact is written under until it is verified (one per process)."""
    return output.with_name(f".{output.stem}.partial-{os.getpid() if pid is None else pid}{output.suffix}")


def check_output(output: Path, artifact_format: Format, force: bool) -> None:
    """Before any work: the output has the format's suffix, replaces only an artifact of that format (and
    only with `force`), and its folder can be written."""
    if output.suffix != artifact_format.suffix:
        raise MNV4Error(f"a {artifact_format.name} artifact must end in {artifact_format.suffix}: {output}")
    if output.exists() or output.is_symlink() or manifest_path(output).exists():
        if not force:
            raise MNV4Error(f"{output} exists; pass --force to overwrite it")
        if output.exists() and not _is_artifact(output, artifact_format):
            kind = "a directory" if output.is_dir() else "a file"
            raise MNV4Error(f"{output} is {kind} that is not a {artifact_format.label} artifact; --force replaces "
                            f"only an artifact, so move it away first")
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MNV4Error(f"cannot create the folder {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise MNV4Error(f"cannot write to {folder}: it is read-only or not yours")


def _is_artifact(path: Path, artifact_format: Format) -> bool:
    if artifact_format.suffix == ".mlpackage":
        return path.is_dir() and (path / "Manifest.json").is_file()
    return path.is_file()


def remove_stale_partials(output: Path) -> None:
    """Remove the partial files of `output` (and their manifests) that a killed export left behind: those
    whose process no longer runs."""
    for path in output.parent.glob(f".{output.stem}.partial-*{output.suffix}*"):
        pid = path.name.removeprefix(f".{output.stem}.partial-").split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            remove_artifact(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def disk_is_full(folder: Path) -> bool:
    """Less than 1 MiB free where the artifact goes: what a toolchain's failure to write most likely meant."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def publish(partial: Path, output: Path) -> None:
    """Move a verified artifact over whatever was at `output`."""
    remove_artifact(output)
    os.replace(partial, output)


def manifest_path(artifact: str | Path) -> Path:
    """Where an artifact's manifest sits: beside it, as `<artifact name>.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomically(document: object, path: str | Path, default=None) -> Path:
    return write_atomically((json.dumps(document, indent=2, default=default) + "\n").encode(), path)


def write_atomically(data: bytes, path: str | Path) -> Path:
    """Write beside the target and rename it over the target, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would keep the file from whoever it is copied for
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock named after `path` (`<path>.lock`, beside it) while building what goes there, so that
    concurrent processes build it once: the others wait, then find it built. Where the OS has no flock (Windows),
    nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
