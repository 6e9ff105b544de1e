"""One runner per runtime behind `Runner`; `load` picks it from the artifact's format (artifact.formats)."""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

from ..artifact.formats import format_of
from ..errors import DamagedArtifactError, MNV4Error, one_line
from .base import Runner


def runner_class(path: str | Path) -> type[Runner]:
    module, name = format_of(path).runner.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def load(path: str | Path, threads: int = 1, runner: Callable[..., Runner] | None = None, **options) -> Runner:
    """The runner for an artifact (.onnx, .tflite, .pte, .mlpackage), ready to call on NCHW float32;
    `runner` replaces the one its format names, and `options` are its keywords (`xnnpack_fp16` for LiteRT),
    refused in one line by a runner without them. An artifact its runtime cannot load (truncated, empty, a
    directory, a broken package) is a DamagedArtifactError that says what the runtime said."""
    path = Path(path)
    if not path.exists():
        raise MNV4Error(f"artifact not found: {path}")
    factory = runner or runner_class(path)
    accepted = inspect.signature(factory).parameters
    for option in options:
        if option not in accepted:
            raise MNV4Error(f"--{option.replace('_', '-')} is not an option for {path.name} "
                            f"({getattr(factory, 'runtime', None) or format_of(path).label})")
    try:
        return factory(path, threads=threads, **options)
    except MNV4Error:
        raise
    except Exception as error:  # the runtime's own complaint about the file, whatever its type
        runtime = getattr(factory, "runtime", None) or format_of(path).label
        raise DamagedArtifactError(f"{runtime} cannot load {path}: {one_line(error)}") from None


__all__ = ["Runner", "load", "runner_class"]
