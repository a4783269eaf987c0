"""llama-router: one OpenAI-compatible endpoint for many local GGUF models.

The public surface is what this module exports (see ``__all__``); every other module is
internal and may change between releases.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
