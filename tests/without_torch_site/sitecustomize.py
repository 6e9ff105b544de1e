"""Started by every interpreter that tests/without_torch.py spawns: the same packages are absent there."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import without_torch  # noqa: E402

without_torch.install()
