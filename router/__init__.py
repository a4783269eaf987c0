"""llama-router: one OpenAI-compatible endpoint for many local GGUF models.

The public surface is what this module exports (see ``__all__``): what plugin authors need
(``hookimpl`` and the data types hooks receive and return) and ``__version__``. Every other
module is internal and may change between releases.

The exports are loaded on first use (PEP 562), so that importing a submodule, such as the
model child's ``router.child.main``, does not import pluggy or the router's settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from router.version import __version__

if TYPE_CHECKING:
    from router.hooks.hookspecs import hookimpl
    from router.hooks.plugin_types import (
        Denial,
        ModelInfo,
        PluginContext,
        Principal,
        RequestInfo,
        Usage,
    )

__all__ = [
    "Denial",
    "ModelInfo",
    "PluginContext",
    "Principal",
    "RequestInfo",
    "Usage",
    "__version__",
    "hookimpl",
]

# export → the module that defines it
_LAZY = {
    "Denial": "router.hooks.plugin_types",
    "ModelInfo": "router.hooks.plugin_types",
    "PluginContext": "router.hooks.plugin_types",
    "Principal": "router.hooks.plugin_types",
    "RequestInfo": "router.hooks.plugin_types",
    "Usage": "router.hooks.plugin_types",
    "hookimpl": "router.hooks.hookspecs",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # found once; later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
