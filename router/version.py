"""The version of llama-router, alone in its module.

Anything may import it without pulling in the rest of the package: ``router/__init__.py``
re-exports it, ``pyproject.toml`` reads it, and the child reports it without importing the
router's plugins or settings.
"""

__version__ = "0.1.0"
