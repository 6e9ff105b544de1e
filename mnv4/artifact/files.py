"""File helpers for artifacts: checksums, sizes, removal and publish-after-verify.

An artifact is written under a hidden partial name beside its output and moved into place only after it
exported and verified, so a failed or interrupted export leaves nothing at the output path."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


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


def partial_path(output: Path) -> Path:
    """The hidden name an artifact is written under until it is verified (one per process)."""
    return output.with_name(f".{output.stem}.partial-{os.getpid()}{output.suffix}")


def publish(partial: Path, output: Path) -> None:
    """Move a verified artifact over whatever was at `output`."""
    remove_artifact(output)
    os.replace(partial, output)


def write_json_atomically(document: object, path: str | Path, default=None) -> Path:
    """Write JSON beside the target and rename it over the target, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2, default=default)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path
