"""The import arrows between router's layers run one way; this test draws the map and fails
on any arrow that points back up."""

from __future__ import annotations

import ast
from pathlib import Path

import router

ROUTER = Path(router.__file__).parent
BASE = {
    "errors",
    "spec",
    "child_options",
    "options_table",
    "model_options",
    "cpu",
    "settings",
    "hosts",
    "version",
    "logs",
}
# What each layer (a folder, or the base modules) may import besides itself.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "processes": set(),
    "hooks": set(),
    "models": {"processes", "hooks"},
    "edge": {"models", "processes", "hooks"},
    # The model child is its own program: it shares the HTTP plumbing and the lifeline.
    "child": {"edge", "processes"},
}


def layer_of(module: str) -> str:
    """``router.models.pool`` -> ``models``; ``router.errors`` -> ``base``."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return "base" if name in BASE else name


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("router"):
            if node.module == "router":
                found.update(f"router.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("router."))
    return found


def test_imports_point_down_the_layers_only() -> None:
    wrong = []
    for path in sorted(ROUTER.rglob("*.py")):
        module = ".".join(path.relative_to(ROUTER.parent).with_suffix("").parts)
        own = layer_of(module)
        if own not in ALLOWED:
            continue  # the top: __init__, cli, server, default_plugins wire the layers
        for target in imports_of(path):
            other = layer_of(target)
            if other not in (own, "base") and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_every_layer_says_what_it_owns_and_may_import() -> None:
    for folder in ("edge", "models", "processes", "hooks"):
        doc = ast.get_docstring(ast.parse((ROUTER / folder / "__init__.py").read_text()))
        assert doc is not None and "May import" in doc, folder
