"""The router's own behaviour, as ordinary plugins on the same hooks a deployer implements.

Each is registered ``trylast``, so a deployer's implementation runs first and, for the
``firstresult`` hooks, wins. Nothing in the router special-cases them.
"""

from __future__ import annotations

from collections.abc import Iterator

from router.default_plugins.aliases import Aliases
from router.default_plugins.api_keys import ApiKeys
from router.default_plugins.lru import LeastRecentlyUsed
from router.settings import RouterSettings

DEFAULT_PLUGINS = (ApiKeys, Aliases, LeastRecentlyUsed)


def default_plugins(settings: RouterSettings) -> Iterator[tuple[str, object]]:
    """(name, plugin) for each built-in plugin, configured from ``settings``."""
    for plugin_class in DEFAULT_PLUGINS:
        yield f"router.{plugin_class.name}", plugin_class(settings)
