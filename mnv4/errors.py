"""Errors that describe bad input or a failed proof, and the exit codes of every `mnv4` command.

The CLI turns an MNV4Error into one line on stderr and exit code 2, a ParityFailed into one line per failure and
exit code 1; any other exception is an internal error (exit code 3, one line; `--debug` shows the traceback)."""
import difflib

# Every command exits with one of these, so that a CI job can tell a numerical regression from a broken
# file from a bug in mnv4.
EXIT_OK = 0
EXIT_PARITY_FAILED = 1
EXIT_BAD_INPUT = 2  # bad options, missing or damaged files, unreadable checkpoints or images
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 128  # plus the signal's number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM


class MNV4Error(ValueError):
    """Base class: the caller asked for something that cannot be done as asked."""


class UnknownVariantError(MNV4Error):
    pass


class InputShapeError(MNV4Error):
    pass


class CheckpointError(MNV4Error):
    pass


class UnsupportedOptionError(MNV4Error):
    """An export option that the chosen format or toolchain cannot honour."""


class MissingExtraError(MNV4Error):
    """A backend whose optional dependencies are not installed."""

    def __init__(self, backend: str, extra: str, instead: str = ""):
        super().__init__(f"{backend} is not installed: pip install 'mnv4[{extra}]'" + (f" ({instead})" if instead else ""))
        self.extra = extra


class MissingSystemPartError(MNV4Error):
    """A part of the system that no pip extra brings (Chromium, Mesa's software Vulkan driver, qemu, Node.js
    packages): the message names it and the command that installs it."""

    def __init__(self, part: str, install: str = "bash scripts/install_system.sh"):
        super().__init__(f"{part} is not installed here: {install}")
        self.part = part


class DamagedArtifactError(MNV4Error):
    """An artifact that its own runtime cannot load: truncated, empty, a directory, a broken package."""


class PlatformUnsupportedError(MNV4Error):
    """A runtime that cannot run on this operating system (Core ML predictions outside macOS)."""


class UnsupportedOperationError(MNV4Error):
    """A Core ML program operation that the Linux interpreter does not implement."""


class ParityFailed(Exception):
    """An artifact that runs but computes something other than the PyTorch model (exit code 1, not a usage error):
    one failure per artifact or row."""

    def __init__(self, failures: list[str]):
        super().__init__("; ".join(failures))
        self.failures = failures


def unknown_value(what: str, value: object, choices) -> str:
    """The message for a value that is not one of `choices`, with the nearest one where a typo is likely."""
    choices = [str(choice) for choice in choices]
    near = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown {what} {value!r}{hint} (choose one of: {', '.join(choices)})"


def one_line(error: BaseException) -> str:
    """A toolchain's or runtime's exception as one line for a report: its type and first line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
