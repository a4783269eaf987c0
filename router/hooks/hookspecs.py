"""The hooks a plugin can implement, and the markers that declare them and their implementations.

``docs/plugins.md`` is generated from these docstrings. Implement a hook with
``@router.hookimpl``; only the arguments you name are passed. The router's own behaviour
(API keys, aliases, LRU eviction) is built from the same hooks in ``router/default_plugins/``,
registered ``trylast``: a deployer's implementation runs first, and for the ``firstresult``
hooks its answer wins.

Hooks marked *async-capable* (``ASYNC_CAPABLE_HOOKS``) may return an awaitable, which the
router awaits. The others are called where the router decides synchronously and must return a
plain value; only these take hook wrappers (``wrapper=True``), see ``router/hooks/plugins.py``.

This module imports only pluggy and the data types: plugins, the defaults and the plugin
manager all import it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from router.hooks.plugin_types import (
    Denial,
    ModelInfo,
    PluginContext,
    Principal,
    RequestInfo,
    Usage,
)

PROJECT = "llama_router"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# The hooks whose implementations may return an awaitable. The router awaits them (or, for
# model_status and request_finished, runs them in the background).
ASYNC_CAPABLE_HOOKS = frozenset(
    {
        "startup",
        "shutdown",
        "authenticate",
        "authorize",
        "resolve_model",
        "transform_request",
        "model_status",
        "request_finished",
    }
)


@hookspec
def startup(router: PluginContext) -> Any:
    """The router has started and is about to serve. *Async-capable.*

    Start background work with ``router.nursery.start_soon(...)``: it is cancelled when the
    router shuts down.
    """


@hookspec
def shutdown(router: PluginContext) -> Any:
    """The router has stopped serving and is about to stop its models. *Async-capable.*"""


@hookspec(firstresult=True)
def authenticate(request: RequestInfo) -> Principal | Denial | None:
    """Who is calling. *Async-capable.*

    Return a ``Principal`` to let the request in, a ``Denial`` to refuse it (401 by default),
    or ``None`` to leave the decision to the next plugin. The built-in implementation checks
    ``--api-key``; with no keys set it lets everyone in as ``anonymous``. ``/health`` is
    never authenticated.
    """


@hookspec(firstresult=True)
def authorize(principal: Principal, model: str, request: RequestInfo) -> Denial | None:
    """Whether ``principal`` may use ``model``. *Async-capable.*

    Return a ``Denial`` (403 by default; 429 with ``retry_after_s`` for rate limits) to refuse.
    """


@hookspec(firstresult=True)
def resolve_model(
    requested: str, request: RequestInfo, catalog: Mapping[str, ModelInfo]
) -> str | None:
    """Which model serves a request that asked for ``requested``. *Async-capable.*

    Return a model id from ``catalog`` (aliases, a default model, routing by header, A/B
    splits), or ``None`` to pass. The built-in implementation resolves ids and aliases.
    """


@hookspec
def transform_request(
    model: str, body: dict[str, Any], principal: Principal
) -> dict[str, Any] | None:
    """Change a JSON request body before it reaches the model. *Async-capable.*

    Return the new body (or change ``body`` in place and return ``None``). Every
    implementation runs, in turn.
    """


@hookspec(firstresult=True)
def choose_eviction(
    candidates: Sequence[ModelInfo], incoming: str, router: PluginContext
) -> str | None:
    """Which idle model to unload to make room for ``incoming``.

    ``candidates`` are the loaded models with no requests in flight that are not pinned.
    Return one of their ids, or ``None`` to pass; the built-in implementation picks the least
    recently used. Called while the router decides: return a value, not an awaitable.
    """


@hookspec(firstresult=True)
def model_fits(
    incoming: ModelInfo, loaded: Sequence[ModelInfo], router: PluginContext
) -> bool | None:
    """Whether ``incoming`` can be loaded next to ``loaded`` without evicting.

    Return ``False`` to make the router evict first (through ``choose_eviction``) even below
    ``--models-max``, ``True`` or ``None`` to leave it to the model count. Return a value,
    not an awaitable.
    """


@hookspec
def child_launch(model: ModelInfo, argv: list[str], env: dict[str, str]) -> None:
    """Adjust how a model's process is started: change ``argv`` and ``env`` in place.

    Called for every start, after the router built both. Return nothing.
    """


@hookspec
def model_status(model: str, old: str, new: str, detail: str) -> Any:
    """A model's status changed (``unloaded``, ``loading``, ``loaded``, ``unloading``).
    *Async-capable.*

    ``detail`` says why, when there is something to say (an exit code, an error line).
    For logs, metrics, webhooks. An awaitable result is run in the background.
    """


@hookspec
def register_routes(app: Any) -> None:
    """Add HTTP routes to the router's Quart app (``@app.get(...)``...)."""


@hookspec
def request_finished(
    model: str, principal: Principal, usage: Usage | None, duration_s: float, status: int
) -> Any:
    """A proxied request has ended (the answer's last byte went out, or the client left).
    *Async-capable.*

    ``usage`` is the answer's token usage as the router read it (``router/edge/usage.py``): what
    the answer stated, from any backend, streamed or not; for a stream without it, its
    completion tokens, counted; None when there was nothing to count (an error body). An
    awaitable result is run in the background.
    """
