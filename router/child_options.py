"""The options a model's child takes, as conf.d ``[args]`` keys: which apply to a model.

The options themselves (flags, kinds, bounds) are defined once in ``router/options_table.py``;
``own_children.py`` turns them into the child's argv with ``child_argv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.options_table import child_argv
from router.spec import ModelSpec

__all__ = ["child_argv", "effective_child_options"]


def effective_child_options(
    spec: ModelSpec, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Lowest first: router.toml [defaults] < the model's [args] < command-line flags."""
    return {**defaults, **spec.args, **overrides}
