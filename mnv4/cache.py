"""Where mnv4 keeps what it builds once and reuses (trained fixtures, emulated roots): `$MNV4_CACHE`, else
`~/.cache/mnv4`. Imports nothing heavy, so every layer can use it."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MNV4_CACHE", Path.home() / ".cache" / "mnv4"))
