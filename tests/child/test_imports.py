"""The child imports only what it needs: never pluggy, the router's settings or conf.d."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from router.processes import lifeline

# The router's side: plugins, settings, conf.d, and the libraries only they need.
ROUTER_ONLY = (
    "pluggy",
    "tomlkit",
    "watchfiles",
    "router.settings",
    "router.models.confd",
    "router.hooks.plugins",
    "router.hooks.hookspecs",
    "router.hooks.plugin_types",
)


def _imported_by(arguments: list[str]) -> list[str]:
    """Every module that ``python -m router ARGUMENTS`` imports (``-X importtime``)."""
    env = {key: value for key, value in os.environ.items() if key != lifeline.ENV_VAR}
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "router", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "router.child.main" in modules, completed.stderr[-2000:]
    return modules


def _is_router_only(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in ROUTER_ONLY)


def test_the_child_command_imports_nothing_of_the_router_side(tmp_path: Path) -> None:
    modules = _imported_by(["child", "--model", str(tmp_path / "absent.gguf")])
    assert "router.child.llama_engine" in modules  # the whole child was imported...
    assert [module for module in modules if _is_router_only(module)] == []  # ...and no more


def test_a_spare_child_imports_nothing_of_the_router_side() -> None:
    modules = _imported_by(["child", "--spare"])
    assert [module for module in modules if _is_router_only(module)] == []
