"""llama-router: one OpenAI-compatible endpoint for many local GGUF models.

The public surface is what this module exports (see ``__all__``): what plugin authors need
(``hookimpl`` and the data types hooks receive and return) and ``__version__``. Every other
module is internal and may change between releases.
"""

from __future__ import annotations

__version__ = "0.1.0"

from router.plugin_types import (
    Denial,
    ModelInfo,
    PluginContext,
    Principal,
    RequestInfo,
    Usage,
)
from router.plugins import hookimpl

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
