"""The version of llama-router, alone in its module.

Anything may import it without pulling in the rest of the package: ``router/__init__.py``
re-exports it, ``pyproject.toml`` reads it, and the child reports it without importing the
router's plugins or settings.
"""

__version__ = "0.1.0"

# /props' ``build_info``, in llama-server's form ``b<BUILD>-<COMMIT>`` (clients written for
# llama.cpp, its own tests among them, read the leading "b"): our version where its build
# number goes, our name where its commit goes.
BUILD_INFO = f"b{__version__}-llama-router"
