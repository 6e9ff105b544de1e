"""Text that comes from files (class names, manifests, results, paths) on its way to a terminal or a one-line error.

Control characters (escape sequences that clear the screen or set the window title, carriage returns, newlines) and
the bidirectional formatting characters (which reorder a line: U+202E, U+2066, ...) are shown escaped (\\x1b, \\u202e);
every other character, joiners of scripts and emoji included, is shown as it is."""
from __future__ import annotations

import unicodedata

BOM = "\ufeff"
# Unicode's bidirectional formatting characters: embeddings, overrides, isolates and marks.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_unsafe(character: str) -> bool:
    return unicodedata.category(character) == "Cc" or character in _BIDI


def unsafe_characters(text: str) -> list[str]:
    return [character for character in text if is_unsafe(character)]


def printable(text: object) -> str:
    """`text` with every unsafe character escaped, so that it shows as written and on one line."""
    text = str(text)
    if not any(map(is_unsafe, text)):
        return text
    return "".join(character.encode("unicode_escape").decode("ascii") if is_unsafe(character) else character
                   for character in text)
