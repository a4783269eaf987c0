"""Loading plugins and calling hooks.

Plugins come from, in order: the built-in ``DEFAULT_PLUGINS`` (registered last-resort,
``trylast``), the entry-point group ``llama_router`` of installed packages (unless
``--no-plugins``), and ``--plugin`` / router.toml ``plugins = [...]``, each a module name or a
path to a ``.py`` file. A plugin that fails to import stops start-up with a message naming it;
``check_pending`` rejects one that implements a hook that does not exist.

Hooks are called here, one implementation at a time (last registered first, as pluggy orders
them), so that a plugin that raises is named in the log and in the 500 the client gets, and
so that an implementation may return an awaitable (datasette's ``await_me_maybe``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from router import hookspecs
from router.errors import RouterError
from router.settings import RouterSettings

log = logging.getLogger("router.plugins")

ENTRY_POINT_GROUP = "llama_router"

hookimpl = pluggy.HookimplMarker("llama_router")


@dataclass
class Plugins:
    """The plugin manager, and the version of each plugin that came from a distribution."""

    manager: pluggy.PluginManager
    versions: dict[str, str] = field(default_factory=dict)


class PluginLoadError(Exception):
    """A plugin could not be loaded; the router does not start."""


class PluginFailed(RouterError):
    """A plugin raised while handling a request."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        super().__init__(
            f"plugin {plugin!r} failed in its {hook} hook: {type(error).__name__}: {error}"
        )
        self.plugin = plugin


def load_plugins(
    settings: RouterSettings, *, entry_points: bool = True, extra: Sequence[str] = ()
) -> Plugins:
    """The defaults, then installed plugins (entry points), then ``extra`` (modules or files)."""
    from router.default_plugins import default_plugins

    plugins = Plugins(pluggy.PluginManager("llama_router"))
    manager = plugins.manager
    manager.add_hookspecs(hookspecs)
    for name, plugin in default_plugins(settings):
        manager.register(plugin, name=name)
    if entry_points:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = entry_point.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {entry_point.name!r} ({entry_point.value}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if manager.get_plugin(entry_point.name) is None:
                manager.register(plugin, name=entry_point.name)
                if entry_point.dist is not None:
                    plugins.versions[entry_point.name] = (
                        f"{entry_point.dist.name} {entry_point.dist.version}"
                    )
    for spec in extra:
        manager.register(_load_module(spec), name=spec)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {exc.plugin!r} is invalid: {exc}") from exc
    return plugins


def _load_module(spec: str) -> ModuleType:
    """A plugin module by import name, or from a ``.py`` file."""
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        module_spec = importlib.util.spec_from_file_location(
            f"llama_router_plugin_{path.stem}", path
        )
        if module_spec is None or module_spec.loader is None or not path.is_file():
            raise PluginLoadError(f"plugin file {spec} cannot be loaded (is it there?)")
        module = importlib.util.module_from_spec(module_spec)
        try:
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {spec!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return module
    try:
        return importlib.import_module(spec)
    except Exception as exc:
        raise PluginLoadError(
            f"plugin {spec!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


async def await_me_maybe(value: Any) -> Any:
    """``value``, awaited first if it is awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def _implementations(plugins: Plugins, hook: str) -> Iterable[tuple[str, Any, list[str]]]:
    for impl in reversed(getattr(plugins.manager.hook, hook).get_hookimpls()):
        yield impl.plugin_name, impl.function, list(impl.argnames)


def has_implementations(plugins: Plugins, hook: str) -> bool:
    return bool(getattr(plugins.manager.hook, hook).get_hookimpls())


async def call_first(plugins: Plugins, hook: str, **kwargs: Any) -> Any:
    """The first non-None result of ``hook``, awaiting implementations that return awaitables."""
    for plugin, function, argnames in _implementations(plugins, hook):
        result = await await_me_maybe(_call(plugin, hook, function, argnames, kwargs))
        if result is not None:
            return result
    return None


async def call_each(plugins: Plugins, hook: str, **kwargs: Any) -> list[Any]:
    """Every implementation's result, in call order."""
    results = []
    for plugin, function, argnames in _implementations(plugins, hook):
        results.append(await await_me_maybe(_call(plugin, hook, function, argnames, kwargs)))
    return results


def call_first_now(plugins: Plugins, hook: str, **kwargs: Any) -> Any:
    """``call_first`` for the hooks the router calls while deciding: no awaitables."""
    for plugin, function, argnames in _implementations(plugins, hook):
        result = _call(plugin, hook, function, argnames, kwargs)
        if inspect.isawaitable(result):
            raise PluginFailed(plugin, hook, TypeError("returned an awaitable; return a value"))
        if result is not None:
            return result
    return None


def call_each_now(plugins: Plugins, hook: str, **kwargs: Any) -> list[Any]:
    """Every implementation, called now; awaitables are returned for the caller to run."""
    return [
        _call(plugin, hook, function, argnames, kwargs)
        for plugin, function, argnames in _implementations(plugins, hook)
    ]


def _call(
    plugin: str, hook: str, function: Any, argnames: list[str], kwargs: dict[str, Any]
) -> Any:
    try:
        return function(*(kwargs[name] for name in argnames))
    except RouterError:
        raise
    except Exception as exc:
        log.exception("plugin %s failed in %s", plugin, hook)
        raise PluginFailed(plugin, hook, exc) from exc


def describe(plugins: Plugins) -> list[dict[str, Any]]:
    """Each loaded plugin: its name, version (when a distribution says) and hooks."""
    described = []
    for name, plugin in plugins.manager.list_name_plugin():
        hooks = sorted(caller.name for caller in plugins.manager.get_hookcallers(plugin) or [])
        described.append({"name": name, "version": plugins.versions.get(name, ""), "hooks": hooks})
    return described
