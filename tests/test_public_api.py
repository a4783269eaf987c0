"""What `router` exports is its public surface; changing it is a decision, not an accident."""

from __future__ import annotations

import subprocess
import sys

import pytest

import router


def test_public_names() -> None:
    assert sorted(router.__all__) == [
        "Denial",
        "ModelInfo",
        "PluginContext",
        "Principal",
        "RequestInfo",
        "Usage",
        "__version__",
        "hookimpl",
    ]
    for name in router.__all__:
        assert getattr(router, name) is not None


def test_the_model_child_imports_neither_pluggy_nor_the_router_core() -> None:
    """The exports load on first use (PEP 562): ``import router.child...`` pays for none."""
    code = (
        "import router.child.main, sys; "
        "assert 'pluggy' not in sys.modules, 'pluggy'; "
        "assert 'router.hooks.plugin_types' not in sys.modules, 'router.hooks.plugin_types'"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_exports_load_on_first_use_and_are_the_defining_modules_objects() -> None:
    from router.hooks import hookspecs, plugin_types

    assert router.hookimpl is hookspecs.hookimpl
    assert router.ModelInfo is plugin_types.ModelInfo
    assert set(router.__all__) <= set(dir(router))
    with pytest.raises(AttributeError):
        router.no_such_name  # noqa: B018
