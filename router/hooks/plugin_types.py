"""The data that hooks receive and return: plain frozen values, no framework objects.

Each field's docstring (the string below it) is the reference in ``docs/plugins.md``, written
there by ``scripts/plugin_docs.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from router.settings import RouterSettings


@dataclass(frozen=True)
class RequestInfo:
    """The HTTP request, as hooks see it (``authenticate``, ``authorize``, ``resolve_model``)."""

    method: str
    """The HTTP method: ``GET``, ``POST``..."""
    path: str
    """The path, without the query string: ``/v1/chat/completions``."""
    headers: Mapping[str, str]
    """The request's headers, by lower-case name; a repeated header keeps its last value."""
    query: Mapping[str, str]
    """The query string's parameters; a repeated one keeps its first value."""
    client: str
    """The peer's address (the client, or the proxy in front of the router), or ``""``."""

    def bearer_token(self) -> str:
        """The API key the client sent, or ``""`` when it sent none.

        Read from ``Authorization: Bearer KEY`` (the scheme in any case, the key stripped of
        spaces), else from an ``x-api-key`` header. This is the key the built-in ``api_keys``
        plugin checks; an ``authenticate`` plugin can call it to read keys the same way.
        """
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return self.headers.get("x-api-key", "")


@dataclass(frozen=True)
class Principal:
    """Who is calling: what ``authenticate`` returns to let a request in."""

    name: str
    """A name for logs and other hooks (``authorize``, ``request_finished``)."""
    is_admin: bool = False
    """Whether the caller may use the admin routes (a model's configuration)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Anything the authenticating plugin wants to hand to its other hooks."""


@dataclass(frozen=True)
class Denial:
    """A refusal, with the HTTP status and message the client gets."""

    message: str
    """What the client reads in ``error.message``."""
    status: int = 403
    """401 (who are you?), 403 (not for you) or 429 (not now); others answer 403."""
    retry_after_s: int | None = None
    """With 429: the ``Retry-After`` header, in seconds (1 when unset)."""


@dataclass(frozen=True)
class Usage:
    """An answer's token counts, as in OpenAI's ``usage`` object."""

    prompt_tokens: int
    """Tokens of the prompt."""
    completion_tokens: int
    """Tokens the model generated."""
    total_tokens: int
    """Both together."""


@dataclass(frozen=True)
class ModelInfo:
    """One model as hooks see it: a snapshot, taken when the hook is called."""

    id: str
    """The model's id: what ``GET /v1/models`` lists and clients send as ``model``."""
    path: Path | None
    """Its GGUF file (the first shard of a split model); ``None`` for a conf.d ``command``
    model that takes no file."""
    aliases: tuple[str, ...]
    """Other names clients may send for it (conf.d ``aliases``)."""
    status: str
    """``unloaded``, ``loading``, ``loaded`` or ``unloading``."""
    in_flight: int
    """Requests that hold it now: admitted and not yet answered in full."""
    last_used: float
    """When its last request ended (or it finished loading), in seconds on the router's
    monotonic clock (``trio.current_time()``): compare it with other models' and with
    ``trio.current_time()``, not with wall-clock time. ``0.0``: never loaded."""
    args: Mapping[str, Any]
    """Its effective child options by name (``ctx_size``, ``n_gpu_layers``...): router.toml
    ``[defaults]``, then its conf.d ``[args]``, then the router's command-line flags."""
    is_pinned: bool
    """Whether it is never evicted (conf.d ``pinned = true``, or ``POST /models/pin``)."""


class PluginContext:
    """The router, for hooks: its settings, its models now, a nursery for background work."""

    settings: RouterSettings
    """The router's settings (``router/settings.py``), read-only."""
    nursery: trio.Nursery
    """Start background work here (``nursery.start_soon``); it is cancelled at shutdown."""

    def __init__(
        self,
        settings: RouterSettings,
        nursery: trio.Nursery,
        models: Callable[[], Mapping[str, ModelInfo]],
    ) -> None:
        self.settings = settings
        self.nursery = nursery
        self._models = models

    @property
    def models(self) -> Mapping[str, ModelInfo]:
        """Every listed model by id, as it is now."""
        return self._models()
