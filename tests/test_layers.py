"""The package's layers run one way: every import inside src/recomposer (module-level or in a function) goes to
the same layer or a lower one. A new module has to be given its layer here, which is the point."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "recomposer"

LAYERS = [  # low to high: each may import its own layer and those before it
    {"__init__", "errors", "validation", "progress"},  # progress: named stages, reported to a listener
    {"colour", "ellipse", "io", "schedulers", "requests", "invocation", "provenance", "attention", "jobs"},  # maths,
    #                                       files, names, requests, attention control, the job queue
    {"conditions"},  # typed values
    {"world"},  # the shapes world (its scenes, renders, captions)
    {"models"},  # backbones, adapters, encoders, the analyser network
    {"decompose"},  # image -> conditions
    {"denoiser"},
    {"guidance"},
    {"sampling"},  # the one loop
    {"inversion", "ilvr"},  # loop-level methods: inversion, masked ILVR
    {"tasks"},  # user-level operations
    {"training"},
    {"evaluation"},  # benchmarks and judges
    {"server"},  # the HTTP API and the web app over the job queue
    {"commands"},
    {"cli", "__main__"},
]
LAYER = {unit: k for k, units in enumerate(LAYERS) for unit in units}


def unit_of(path: Path, root: Path = SRC) -> str:
    return path.relative_to(root).with_suffix("").parts[0]


def imported_units(path: Path, root: Path = SRC) -> set[tuple[str, int]]:
    """The units a file imports from recomposer, with the line of each import."""
    package = list(path.relative_to(root).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = [target[0]] if target else [alias.name for alias in node.names]
            found |= {(name, node.lineno) for name in names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recomposer."):
            found.add((node.module.split(".")[1], node.lineno))
        elif isinstance(node, ast.Import):
            found |= {(a.name.split(".")[1], node.lineno) for a in node.names if a.name.startswith("recomposer.")}
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in SRC.rglob("*.py")}
    assert units <= set(LAYER), sorted(units - set(LAYER))


def test_imports_run_down_the_layers():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        source = unit_of(path)
        for target, line in imported_units(path):
            if target in LAYER and target != source and LAYER[target] > LAYER[source]:
                upward.append(f"{path.relative_to(SRC)}:{line}: {source} imports {target}")
    assert upward == []


def test_the_checker_sees_upward_imports_of_every_form(tmp_path):
    probe = tmp_path / "conditions" / "caption.py"
    probe.parent.mkdir()
    probe.write_text("from ..world.scene import Scene\nimport recomposer.tasks.run\n\ndef f():\n"
                     "    from .. import sampling\n    from recomposer.training import train\n")
    found = {unit for unit, _ in imported_units(probe, tmp_path)}
    assert found == {"world", "tasks", "sampling", "training"}
    assert all(LAYER[t] > LAYER[unit_of(probe, tmp_path)] for t in found)
