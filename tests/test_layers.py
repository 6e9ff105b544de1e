"""Imports run one way, top-level modules included: the base (errors, then data, cpu, cache, extras, chatter), what
an artifact is and the model, the emulated devices, the runtimes, verification, export, the bench, the CLI. Lazy
imports inside functions count too."""
import ast
from pathlib import Path

MNV4 = Path(__file__).resolve().parents[1] / "mnv4"

# Each unit (a top-level module or a subpackage) and its layer: a unit imports units of lower layers only.
LAYERS = {
    "errors": 0,
    "cache": 1, "cpu": 1, "extras": 1, "chatter": 1, "data": 1, "text": 1,
    "artifact": 2, "calibration": 2,
    "model": 3, "emulation": 3,
    "runtimes": 4,
    "verification": 5,
    "export": 6,
    "bench": 7,
    "cli": 8,
    "__main__": 9, "__init__": 9,
    "__version__": 0,  # the package's version, defined in its __init__, which imports nothing at import time
}


def unit_of(path: Path) -> str:
    relative = path.relative_to(MNV4)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_units(path: Path):
    """(line, unit) of every mnv4 unit the file imports, at module level or inside functions."""
    module = ["mnv4", *path.relative_to(MNV4).with_suffix("").parts]
    package = module[:-1]  # the package a relative import starts from, for an __init__ too
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
            if node.level and not node.module:  # from . import a, b
                names = [".".join(base + [alias.name]) for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mnv4" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_unit_has_a_layer():
    units = {unit_of(path) for path in MNV4.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_run_one_way():
    against = [f"mnv4/{path.relative_to(MNV4)}:{line} imports mnv4.{unit}"
               for path in sorted(MNV4.rglob("*.py")) for line, unit in imported_units(path)
               if unit != unit_of(path) and LAYERS.get(unit, 99) >= LAYERS[unit_of(path)]]
    assert not against, "\n".join(against)
