"""Toolchains' own output (absl, oneDNN and XNNPACK INFO lines, deprecation warnings, op counts, cpuinfo
and threadpool notices) kept off the terminal: `captured` sends file descriptors 1 and 2 — where C++
libraries and Python alike write — to a temporary file, and shows what was captured only when the step
fails with something other than bad input."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TextIO

from .errors import MNV4Error


def terminal() -> TextIO:
    """A stream on the real stderr that stays on the terminal while output is captured (progress, summaries)."""
    sys.stderr.flush()
    return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def captured(enabled: bool = True, shown_to: TextIO | None = None) -> Iterator[None]:
    """Capture everything written to stdout and stderr; on an unexpected failure (not an MNV4Error) write it
    to `shown_to` (default: the real stderr) before the error goes on. `enabled=False` (--verbose) passes
    everything through."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as log:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        try:
            yield
        except Exception as error:
            _restore(saved)
            if not isinstance(error, MNV4Error):
                log.seek(0)
                text = log.read().decode("utf-8", errors="replace")
                if text.strip():
                    stream = shown_to or sys.stderr
                    stream.write(text if text.endswith("\n") else text + "\n")
                    stream.flush()
            raise
        finally:
            _restore(saved)


def _restore(saved: dict[int, int]) -> None:
    """Put the original descriptors back (once: a second call finds them closed and does nothing)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for fd, original in list(saved.items()):
        os.dup2(original, fd)
        os.close(original)
        del saved[fd]
