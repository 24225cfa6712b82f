"""The package's import layering: data flows one way, and no module imports a layer above it.

Layers, bottom to top (a module may import its own layer and those below; function-level
imports count too, so a cycle cannot hide in a function body): see ``LAYERS``. The build
(``pipeline``) runs the stages and assembles the dataset; ``hub`` publishes what ``dataset``
made; the command line and the Python API sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "generator" / "synth_disco"

LAYERS: list[set[str]] = [
    {"errors", "records", "seeds", "faults", "progress"},
    {"store", "engines"},
    {"recipe"},
    {"discussion", "annotation"},
    {"design", "dataset"},
    {"pipeline"},
    {"hub"},
    # The package's face: ``synth_disco/__init__.py`` hands on the API's names (lazily).
    {"cli", "api", "runinfo", "__main__", "__init__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part(module: Path) -> str:
    """The top-level name (module or subpackage) a source file belongs to."""
    rel = module.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level synth_disco part) of every synth_disco import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(path.relative_to(PACKAGE).parent.parts)[: len(path.parts)]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # "from . import x" at the top
                    target = [node.names[0].name]
                found.append((node.lineno, target[0]))
            elif node.module and node.module.split(".")[0] == "synth_disco":
                parts = node.module.split(".")
                name = parts[1] if len(parts) > 1 else node.names[0].name
                found.append((node.lineno, name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "synth_disco" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in SOURCES}
    assert parts <= set(LEVEL), f"give these a layer in LAYERS: {sorted(parts - set(LEVEL))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_it(path):
    mine = LEVEL[_part(path)]
    upward = [
        f"{path.relative_to(PACKAGE)}:{line} imports synth_disco.{name}"
        for line, name in _imports(path)
        if name in LEVEL and LEVEL[name] > mine
    ]
    assert not upward, "\n".join(upward)
