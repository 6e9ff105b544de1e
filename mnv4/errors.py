"""Errors that describe bad input. The CLI turns each into a one-line message and exit code 2."""


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

    def __init__(self, backend: str, extra: str):
        super().__init__(f"{backend} is not installed: pip install 'mnv4[{extra}]'")
        self.extra = extra


class PlatformUnsupportedError(MNV4Error):
    """A runtime that cannot run on this operating system (Core ML predictions outside macOS)."""


class UnsupportedOperationError(MNV4Error):
    """A Core ML program operation that the Linux interpreter does not implement."""


def one_line(error: BaseException) -> str:
    """A toolchain's or runtime's exception as one line for a report: its type and first line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
