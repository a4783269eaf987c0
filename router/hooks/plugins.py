"""Loading plugins and calling hooks.

Plugins come from, in order: the defaults the caller passes (the server passes the built-in
``router/default_plugins``, registered ``trylast``), the entry-point group ``llama_router`` of
installed packages (unless ``--no-plugins``), and ``--plugin`` / router.toml ``plugins = [...]``,
each a module name or a path to a ``.py`` file. A plugin that fails to import, implements a hook
that does not exist or asks for an argument its hook does not pass stops start-up with one line
that names it (``PluginLoadError``).

Hooks are called through pluggy's own caller (``manager.hook.NAME(...)``), so hook wrappers
(``wrapper=True``), call tracing and the call order are pluggy's. Three things are added, by
registering each plugin through a thin adapter that guards each of its implementations:

- a plugin that raises is named in the log and in the 500 the client gets (``PluginFailed``),
  unless it raised a RouterError from a hook that runs while a request is handled: that is
  its answer to the client;
- an implementation of an async-capable hook may return an awaitable, which the caller awaits
  (datasette's ``await_me_maybe``); for a first-result hook, an awaitable that comes to ``None``
  passes, and the implementations after it are consulted in a further call, which skips those
  already consulted, so each runs at most once;
- the hooks called while the router decides must return plain values.

Hook wrappers see what pluggy's call returns, and pluggy is synchronous: around an
async-capable hook a wrapper would see an awaitable that has not run, not the answer, and a
first-result hook may take more than one call. So wrappers are accepted only on the hooks that
return plain values, and refused, with a message that says so, on the async-capable ones.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
import types
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from router.errors import PluginFailed, PluginLoadError, RouterError
from router.hooks import hookspecs
from router.hooks.hookspecs import ASYNC_CAPABLE_HOOKS, PROJECT

log = logging.getLogger("router.hooks.plugins")

ENTRY_POINT_GROUP = "llama_router"


@dataclass
class Plugins:
    """The plugin manager, and the version of each plugin that came from a distribution."""

    manager: pluggy.PluginManager
    versions: dict[str, str] = field(default_factory=dict)


def load_plugins(
    defaults: Iterable[tuple[str, object]],
    *,
    entry_points: bool = True,
    extra: Sequence[str] = (),
) -> Plugins:
    """``defaults`` ((name, plugin) pairs), then installed plugins (entry points), then
    ``extra`` (modules or ``.py`` files). Raises PluginLoadError."""
    plugins = Plugins(PluginManager(PROJECT))
    manager = plugins.manager
    manager.add_hookspecs(hookspecs)
    for name, plugin in defaults:
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
        if manager.get_plugin(spec) is None:  # named twice: loaded once
            manager.register(_load_module(spec), name=spec)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginLoadError(f"plugin {name!r} is invalid: {_one_line(exc)}") from exc
    return plugins


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, that checks each plugin against the hookspecs with a message a
    deployer can act on, and registers it through an adapter that guards its implementations
    (see the module docstring). ``unregister`` takes the name, not the plugin object."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self._originals: dict[str, object] = {}  # name → the plugin object behind its adapter

    def register(self, plugin: object, name: str | None = None) -> str | None:
        if plugin is None:
            return None
        name = name or self.get_canonical_name(plugin)
        for other_name, other in self._originals.items():
            if other is plugin and self.get_plugin(other_name) is not None:
                raise PluginLoadError(
                    f"plugin {name!r} is already loaded as {other_name!r}: name it once "
                    "(an installed plugin loads without --plugin; --no-plugins skips those)"
                )
        implementations = self._checked_implementations(plugin, name)
        adapter = types.SimpleNamespace()
        for attr, (hook, function, opts) in implementations.items():
            guarded = _guard(name, hook, function, is_wrapper=_is_wrapper(opts))
            setattr(guarded, f"{PROJECT}_impl", opts)
            setattr(adapter, attr, guarded)
        try:
            registered = super().register(adapter, name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginLoadError(f"plugin {name!r} cannot be loaded: {_one_line(exc)}") from exc
        self._originals[name] = plugin
        return registered

    def _checked_implementations(
        self, plugin: object, name: str
    ) -> dict[str, tuple[str, Callable[..., Any], Any]]:
        """attribute → (hook, function, options) for each implementation in ``plugin``;
        PluginLoadError, saying what to change, for the first one that cannot work."""
        found = {}
        hooks = sorted(n for n, caller in vars(self.hook).items() if caller.has_spec())
        for attr in sorted(dir(plugin)):
            opts = self.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            hook = opts.get("specname") or attr
            function = getattr(plugin, attr)
            caller = getattr(self.hook, hook, None)
            if caller is None or caller.spec is None:
                if opts.get("optionalhook"):
                    found[attr] = (hook, function, opts)
                    continue
                raise PluginLoadError(
                    f"plugin {name!r} implements {hook!r}, which is not a llama-router hook "
                    f"(the hooks: {', '.join(hooks)}): rename the function, or mark it "
                    "@hookimpl(optionalhook=True) if it is meant for another version"
                )
            passed = caller.spec.argnames
            unknown = [arg for arg in _required_arguments(function) if arg not in passed]
            if unknown:
                raise PluginLoadError(
                    f"plugin {name!r}: its {hook} hook asks for {unknown[0]!r}, which {hook} "
                    f"does not pass; it passes {', '.join(passed)}: rename the argument, or "
                    "drop it"
                )
            if _is_wrapper(opts) and hook in ASYNC_CAPABLE_HOOKS:
                sync_hooks = sorted(set(hooks) - ASYNC_CAPABLE_HOOKS)
                raise PluginLoadError(
                    f"plugin {name!r}: {hook} takes no hook wrapper (wrapper=True): its "
                    "implementations may return awaitables, which a wrapper would see unrun; "
                    f"implement it as an ordinary hook (tryfirst=True runs it first); "
                    f"wrappers work on {', '.join(sync_hooks)}"
                )
            if _is_wrapper(opts) and not inspect.isgeneratorfunction(function):
                raise PluginLoadError(
                    f"plugin {name!r}: its {hook} hook is a wrapper (wrapper=True) but does not "
                    "yield: write `result = yield` where the other implementations run"
                )
            found[attr] = (hook, function, opts)
        return found


def _is_wrapper(opts: Any) -> bool:
    return bool(opts.get("wrapper") or opts.get("hookwrapper"))


def _required_arguments(function: Callable[..., Any]) -> list[str]:
    """The arguments pluggy passes to ``function`` by name: those without a default."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in positional and p.default is p.empty]


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _load_module(spec: str) -> types.ModuleType:
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


# ---- guarding each implementation ----------------------------------------------------------


@dataclass
class _Call:
    """One call of a hook through pluggy: which plugins to pass over, and which ran."""

    skip: frozenset[str] = frozenset()
    consulted: list[str] = field(default_factory=list)


_current_call: ContextVar[_Call | None] = ContextVar("llama_router_hook_call", default=None)

# The hooks that run while a request is handled: a RouterError they raise (a 403, a 429) is
# their answer to the client. From any other hook, it is a failure like any exception.
_REQUEST_HOOKS = frozenset({"authenticate", "authorize", "resolve_model", "transform_request"})


def _guard(
    plugin: str, hook: str, function: Callable[..., Any], *, is_wrapper: bool
) -> Callable[..., Any]:
    """``function``, with pluggy's view of its arguments (``functools.wraps``), naming
    ``plugin`` when it fails; see the module docstring."""
    if is_wrapper:

        @functools.wraps(function)
        def guarded_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            try:
                return (yield from function(*args, **kwargs))
            except PluginFailed:
                raise  # another implementation's failure, passed through the wrapper
            except Exception as exc:
                raise _failed(plugin, hook, exc) from exc

        return guarded_wrapper

    may_await = hook in ASYNC_CAPABLE_HOOKS
    may_answer_client = hook in _REQUEST_HOOKS

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = _current_call.get()
        if call is not None:
            if plugin in call.skip:
                return None
            call.consulted.append(plugin)
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            if may_answer_client and isinstance(exc, RouterError):
                raise
            raise _failed(plugin, hook, exc) from exc
        if not inspect.isawaitable(result):
            return result
        if may_await:
            return _Pending(plugin, hook, result, may_answer_client=may_answer_client)
        _close(result)
        raise _failed(plugin, hook, TypeError("returned an awaitable; return a value"))

    return guarded


def _failed(plugin: str, hook: str, error: BaseException) -> PluginFailed:
    log.error("plugin %s failed in %s", plugin, hook, exc_info=error)
    return PluginFailed(plugin, hook, error)


class _Pending:
    """An implementation's awaitable answer; awaiting it names the plugin if it fails."""

    __slots__ = ("_awaitable", "_may_answer_client", "hook", "plugin")

    def __init__(
        self, plugin: str, hook: str, awaitable: Awaitable[Any], *, may_answer_client: bool
    ) -> None:
        self.plugin = plugin
        self.hook = hook
        self._awaitable = awaitable
        self._may_answer_client = may_answer_client

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._awaitable.__await__())
        except Exception as exc:
            if self._may_answer_client and isinstance(exc, RouterError):
                raise
            raise _failed(self.plugin, self.hook, exc) from exc

    def close(self) -> None:
        _close(self._awaitable)


def _close(awaitable: object) -> None:
    """Close an awaitable that will never be awaited (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def _call(plugins: Plugins, hook: str, kwargs: dict[str, Any], call: _Call) -> Any:
    """pluggy's call of ``hook``, with ``call`` for the guards to read."""
    token = _current_call.set(call)
    try:
        return getattr(plugins.manager.hook, hook)(**kwargs)
    finally:
        _current_call.reset(token)


# ---- calling hooks -------------------------------------------------------------------------


async def await_me_maybe(value: Any) -> Any:
    """``value``, awaited first if it is awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def has_implementations(plugins: Plugins, hook: str) -> bool:
    return bool(getattr(plugins.manager.hook, hook).get_hookimpls())


async def call_first(plugins: Plugins, hook: str, **kwargs: Any) -> Any:
    """The first non-None answer of a first-result ``hook``, awaited when it is awaitable.

    An awaitable that comes to None passes: the implementations after it are asked in a
    further call, which passes over those already asked.
    """
    call = _Call()
    while True:
        result = _call(plugins, hook, kwargs, call)
        if not isinstance(result, _Pending):
            return result
        answer = await result
        if answer is not None:
            return answer
        call = _Call(skip=call.skip | set(call.consulted))


async def call_each(plugins: Plugins, hook: str, **kwargs: Any) -> list[Any]:
    """Every implementation's answer, in call order, each awaited in turn."""
    results = _call(plugins, hook, kwargs, _Call())
    answers = []
    try:
        for result in results:
            answers.append(await await_me_maybe(result))
    finally:
        for result in results[len(answers) + 1 :]:
            _close(result)  # one before them failed or was cancelled
    return answers


def call_first_now(plugins: Plugins, hook: str, **kwargs: Any) -> Any:
    """``call_first`` for the hooks the router calls while deciding: plain values only.

    An implementation that fails is logged and passed over, so the next one decides: a broken
    plugin never leaves a decision unmade. PluginFailed only when a hook wrapper fails.
    """
    call = _Call()
    while True:
        try:
            return _call(plugins, hook, kwargs, call)
        except PluginFailed as exc:
            if exc.plugin not in call.consulted:
                raise
            call = _Call(skip=call.skip | set(call.consulted))


def call_each_now(plugins: Plugins, hook: str, **kwargs: Any) -> list[Any]:
    """Every implementation, called now; awaitables are returned for the caller to run."""
    results: list[Any] = _call(plugins, hook, kwargs, _Call())
    return results


def describe(plugins: Plugins) -> list[dict[str, Any]]:
    """Each loaded plugin: its name, version (when a distribution says) and hooks."""
    described = []
    for name, plugin in plugins.manager.list_name_plugin():
        hooks = sorted(caller.name for caller in plugins.manager.get_hookcallers(plugin) or [])
        described.append({"name": name, "version": plugins.versions.get(name, ""), "hooks": hooks})
    return described
