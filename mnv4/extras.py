"""Which optional parts of mnv4 this install has: the runtime-only install (`mnv4[runtime]`) has no PyTorch."""
from __future__ import annotations

from functools import cache


@cache
def torch_installed() -> bool:
    """Whether PyTorch imports here (an import, not a lookup: a torch that is present but broken counts as absent)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
