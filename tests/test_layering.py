"""Arrows only point down: `fedsynth.common` imports nothing from `fedsynth.client` or `fedsynth.server`, and the
server nothing from the client; every import names the one package."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("folder,forbidden", [("common", ("fedsynth.client", "fedsynth.server")),
                                              ("server", ("fedsynth.client",))])
def test_a_lower_layer_imports_nothing_from_a_higher_one(folder, forbidden):
    assert [(f, m) for f, m in _imports(folder) if m.startswith(forbidden)] == []


def test_no_module_imports_the_folders_by_their_top_level_names():
    top = ("client", "server", "common")
    wrong = [(f, m) for folder in (*top, "tests", "bench") for f, m in _imports(folder) if m.split(".")[0] in top]
    assert wrong == []
