"""The kinds of value the files mnv4 reads may hold, and the one check of a JSON object against them: every field of a
manifest, a stored reference's record or a results file is checked by type and range before any of its values is
used, so that a damaged or hostile file is one line naming the file and the field, never a crash or a wrong answer."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MNV4Error
from ..text import unsafe_characters

MAX_TEXT = 4096  # characters of any one text field


@dataclass(frozen=True)
class Kind:
    description: str  # what the field must be, as a message says it
    accepts: Callable[[object], bool]

    def __or__(self, other: Kind) -> Kind:
        return Kind(f"{self.description} or {other.description}", lambda v: self.accepts(v) or other.accepts(v))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _within(value, low, high) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _range(low, high) -> str:
    return f" from {low:g} to {high:g}" if low is not None and high is not None else \
        f" of at least {low:g}" if low is not None else f" of at most {high:g}" if high is not None else ""


def integer(low: int | None = None, high: int | None = None) -> Kind:
    return Kind(f"an integer{_range(low, high)}",
                lambda v: isinstance(v, int) and not isinstance(v, bool) and _within(v, low, high))


def number(low: float | None = None, high: float | None = None, above: float | None = None) -> Kind:
    description = f"a finite number{_range(low, high)}" + (f" above {above:g}" if above is not None else "")
    return Kind(description, lambda v: _is_number(v) and _within(v, low, high) and (above is None or v > above))


def text(max_length: int = MAX_TEXT) -> Kind:
    """A string without control or bidirectional characters, of at most `max_length` characters."""
    return Kind(f"a text of at most {max_length} characters without control or bidirectional characters",
                lambda v: isinstance(v, str) and len(v) <= max_length and not unsafe_characters(v))


def one_of(choices) -> Kind:
    choices = tuple(choices)
    return Kind(f"one of {', '.join(map(str, choices))}", lambda v: isinstance(v, (str, int)) and v in choices)


def list_of(kind: Kind, length: int | None = None, most: int = 100_000) -> Kind:
    size = f"{length} " if length is not None else ""
    return Kind(f"a list of {size}values each {kind.description}",
                lambda v: isinstance(v, list) and (length is None or len(v) == length) and len(v) <= most
                and all(kind.accepts(item) for item in v))


NOTHING = Kind("null", lambda v: v is None)
BOOLEAN = Kind("true or false", lambda v: isinstance(v, bool))
OBJECT = Kind("an object", lambda v: isinstance(v, dict))
SHA256 = Kind("a sha256 (64 hexadecimal digits)",
              lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v))


def check(document: object, fields: dict[str, Kind], where: str, optional: tuple[str, ...] = ()) -> dict:
    """`document` if it is an object whose every field of `fields` (those in `optional` may be absent) is of its
    kind; else a one-line MNV4Error naming `where` and the field."""
    if not isinstance(document, dict):
        raise MNV4Error(f"{where} is not a JSON object")
    for key, kind in fields.items():
        if key not in document:
            if key in optional:
                continue
            raise MNV4Error(f"{where} is missing the key {key!r}")
        if not kind.accepts(document[key]):
            raise MNV4Error(f"{where} has a bad value for {key!r}: {shown(document[key])} (expected {kind.description})")
    return document


def shown(value: object, most: int = 60) -> str:
    """A value as a message shows it: its repr (which escapes what a terminal would obey), cut short."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."
