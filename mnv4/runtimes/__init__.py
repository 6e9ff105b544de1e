"""One runner per runtime behind `Runner`; `load` picks it from the artifact's format and the runtime asked for
(artifact.formats: FORMATS, RUNTIMES)."""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

from ..artifact.formats import format_of, runtime_of
from ..artifact.options import OPTIONS
from ..errors import DamagedArtifactError, MissingExtraError, MNV4Error, one_line
from .base import Runner


def runner_class(path: str | Path, runtime: str | None = None) -> type[Runner]:
    """The runner of runtime `runtime` (default: the CPU runtime of the artifact's format); its runtime missing
    here (ExecuTorch's needs PyTorch, which the runtime-only install lacks) is a MissingExtraError naming the extra
    to install."""
    module, name = runtime_of(path, runtime).runner.split(":")
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ImportError as error:
        raise _missing_runtime(path, error) from None


def recorded_runtime(path: str | Path, runtime: str | None = None) -> str:
    """The runtime a result names for the artifact at `path` run in `runtime`: a format's CPU runtime as this platform's
    runner calls itself (Core ML: its predict on macOS, its program interpreter elsewhere), any other by its row."""
    row = runtime_of(path, runtime)
    return runner_class(path, row.name).runtime if row is format_of(path).runtime else row.name


def _missing_runtime(path: str | Path, error: ImportError) -> MissingExtraError:
    row = format_of(path)
    return MissingExtraError(f"{row.label}'s runtime ({error.name or error})", row.extra)


def load(path: str | Path, threads: int = 1, runner: Callable[..., Runner] | None = None, runtime: str | None = None,
         normalisation: tuple | None = None, **options) -> Runner:
    """The runner for an artifact (.onnx, .ort, .tflite, .pte, .mlpackage) in `runtime` (a row of RUNTIMES; default: its
    format's CPU runtime), ready to call on NCHW float32; `runner` replaces the runtime's, and `options` are its
    keywords (`xnnpack_fp16` for LiteRT), refused in one line by a runner without them. `normalisation`, (mean, std),
    recovers an image input's pixels where the manifest is not written yet (Runner.image_input). An artifact its
    runtime cannot load (truncated, empty, a directory, a broken package) is a DamagedArtifactError that says what
    the runtime said."""
    path = Path(path)
    if not path.exists():
        raise MNV4Error(f"artifact not found: {path}")
    OPTIONS["threads"].check_value(threads)
    factory = runner or runner_class(path, runtime)
    if runner is None:
        row = runtime_of(path, runtime)
        options, name = {**dict(row.options), **options}, row.name
    else:
        name = getattr(factory, "runtime", None) or format_of(path).label
    accepted = inspect.signature(factory).parameters
    for option in options:
        if option not in accepted:
            raise MNV4Error(f"--{option.replace('_', '-')} is not an option for {path.name} ({name})")
    try:
        loaded = factory(path, threads=threads, **options)
        loaded.normalisation = normalisation or loaded.normalisation
        return loaded
    except MNV4Error:
        raise
    except ImportError as error:  # a runtime that imports what it needs when it loads
        raise _missing_runtime(path, error) from None
    except Exception as error:  # the runtime's own complaint about the file, whatever its type
        raise DamagedArtifactError(f"{name} cannot load {path}: {one_line(error)}") from None


__all__ = ["Runner", "load", "recorded_runtime", "runner_class"]
