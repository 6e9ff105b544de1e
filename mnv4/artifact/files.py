"""File helpers for artifacts: checksums, sizes, removal and publish-after-verify.

An artifact is written under a hidden partial name beside its output and moved into place only after it
exported and verified, so a failed or interrupted export leaves nothing at the output path."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import MNV4Error
from .formats import Format, format_of


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
    """Size on disk of a file, or of all the files of a directory artifact, with the files its export wrote beside
    it (ncnn's weights are most of its bytes)."""
    path = Path(path)
    own = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return own + sum(p.stat().st_size for p in companion_paths(path).values() if p.is_file())


def remove_artifact(path: str | Path) -> None:
    """Remove a file or a directory artifact; nothing there is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def companion_paths(artifact: str | Path) -> dict[str, Path]:
    """The files its exporter writes beside an artifact (its format's `companions`), by what the manifest calls them:
    named like the artifact, its suffix replaced (a partial artifact's are partial too)."""
    artifact = Path(artifact)
    return {name: artifact.with_suffix(suffix) for name, suffix in format_of(artifact).companions}


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
    writable_folder(output.parent, "the folder")


def writable_folder(folder: Path, what: str) -> Path:
    """`folder`, created where it is not there, refused in one line where it cannot be written (a file in its
    place, no permission, a read-only disk): checked before the work whose result goes there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise MNV4Error(f"cannot write to {what} {folder}: {error.strerror or error}") from None
    return folder


def _is_artifact(path: Path, artifact_format: Format) -> bool:
    if artifact_format.suffix == ".mlpackage":
        return path.is_dir() and (path / "Manifest.json").is_file()
    return path.is_file()


def remove_stale_partials(output: Path) -> None:
    """Remove the partial files of `output` (and their manifests and companions) that a killed export left behind:
    those whose process no longer runs."""
    suffixes = (output.suffix, *(suffix for _, suffix in format_of(output).companions))
    for path in (path for suffix in suffixes for path in output.parent.glob(f".{output.stem}.partial-*{suffix}*")):
        pid = path.name.removeprefix(f".{output.stem}.partial-").split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_running(int(pid)):
            remove_artifact(path)


def process_running(pid: int) -> bool:
    """Whether process `pid` still runs (another user's counts), so that what it is writing is left alone."""
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


# A manifest or a results file is kilobytes; anything this large is not one.
MAX_JSON_BYTES = 32 << 20


def write_json_atomically(document: object, path: str | Path) -> Path:
    """Write JSON as JSON allows it (see `plain`)."""
    return write_atomically((json.dumps(plain(document), indent=2, allow_nan=False) + "\n").encode(), path)


def plain(value):
    """`value` as JSON holds it: numpy's numbers as Python's (a median from np.percentile, a count from np.int64),
    and a number that is not finite (a NaN error, an infinite ratio) as None."""
    if hasattr(value, "item") and not isinstance(value, (dict, list, tuple, str)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def read_json(path: str | Path, what: str) -> object:
    """The JSON document of a file mnv4 reads (`what`: "manifest", "results file"), or a one-line refusal naming
    the file: unreadable, too large to be one, not UTF-8, not JSON, NaN or Infinity (not JSON either), nested too
    deep to parse."""
    path = Path(path)
    text = read_text(path, what, MAX_JSON_BYTES)
    try:
        return json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as error:
        raise MNV4Error(f"{what} {path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    except ValueError as error:
        raise MNV4Error(f"{what} {path} is not valid JSON: {error}") from None
    except RecursionError:
        raise MNV4Error(f"{what} {path} is not valid JSON: nested too deeply") from None


def read_text(path: Path, what: str, most: int) -> str:
    """The UTF-8 text of a file mnv4 reads (`what` names it: "manifest", "--labels file"), as written (no newline
    translation), or a one-line refusal naming the file: unreadable, larger than `most` bytes, not UTF-8."""
    try:
        size = path.stat().st_size
        if size > most:
            raise MNV4Error(f"{what} {path} is {size} bytes, more than any {what} ({most} bytes)")
        return path.read_bytes().decode("utf-8")
    except OSError as error:
        raise MNV4Error(f"cannot read {what} {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise MNV4Error(f"{what} {path} is not UTF-8 text") from None


def _not_json(constant: str):
    raise ValueError(f"it holds {constant}, which JSON has no place for")


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
def exclusive(path: str | Path, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock named after `path` (`<path>.lock`, beside it) while building what goes there, so that
    concurrent processes build it once: the others wait, then find it built. With `busy`, another holder is not
    waited for: the error `busy` says so. Where the OS has no flock (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise MNV4Error(busy) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def claimed(folder: Path, what: str) -> Iterator[Path]:
    """`folder`, writable, held by this run alone while it writes there: a run that shares it (the same
    --output-dir) would read or overwrite another's intermediate files, so it is refused in one line. A claim this
    process holds already (the CLI's, around the library's) is the same claim."""
    key = Path(folder).resolve()
    if key in _CLAIMED:
        yield folder
        return
    writable_folder(folder, what)
    with exclusive(folder / ".mnv4", busy=f"{what} {folder} is being written by another mnv4 run; wait for it to "
                                          f"finish, or choose another"):
        _CLAIMED.add(key)
        try:
            yield folder
        finally:
            _CLAIMED.discard(key)


_CLAIMED: set[Path] = set()
