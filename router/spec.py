"""What the router knows of one model, whatever found it (a models folder, conf.d or a peer): the
data every layer passes around, so it lives below them all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One model the router can serve: found in a models folder, or defined in conf.d."""

    id: str
    path: Path | None  # None only for a conf.d 'command' model that takes no file
    mmproj: Path | None = None
    aliases: tuple[str, ...] = ()
    # GET /models' "source", in llama.cpp's words where it has them: "models_dir", "cache",
    # "preset"; ours: "conf.d", "peer".
    source: str = "models_dir"
    source_file: Path | None = None
    description: str = ""
    command: tuple[str, ...] | None = None  # an OpenAI-compatible server to run instead
    health: str = "/health"  # for 'command' models: polled until it answers 200
    ttl_s: float = 0.0  # idle seconds before unloading; 0: never
    load_on_startup: bool = False
    is_pinned: bool = False
    stop_timeout_s: float | None = None  # None: the router's --stop-timeout
    max_queue: int | None = None  # requests that may wait for it; None: no limit
    # False: left out of the model lists (GET /models, /api/tags) though a request naming it is
    # served: a cache entry a preset with dedup-cache-models stands for, as in llama-server.
    is_listed: bool = True
    args: Mapping[str, Any] = field(default_factory=dict)  # child options (CHILD_OPTIONS)
    env: Mapping[str, str] = field(default_factory=dict)
    # Served elsewhere (a conf.d 'url', or a peer's model): never started, stopped or counted
    # against --models-max; requests are forwarded to it.
    upstream: Upstream | None = None


@dataclass(frozen=True)
class Upstream:
    """An OpenAI-compatible server elsewhere, and how to reach it.

    It holds the *name* of the variable with the key, never the key: a spec is shown, logged
    and compared, and the key must stay out of all of these.
    """

    url: str  # http(s)://host:port[/base]: a request's path is appended to it
    model: str = ""  # the id the upstream knows the model by ("model" in bodies is rewritten)
    api_key_env: str | None = None  # sent upstream as "Authorization: Bearer <its value>"
    tls_verify: bool | Path = True  # https: against the system's CAs, not at all, or a CA file
    connect_timeout_s: float = 5.0  # also bounds each health check
    timeout_s: float | None = None  # the longest silence from it; None: the router's --timeout
    peer: str | None = None  # the peer that lists it, for a peer's model


@dataclass(frozen=True)
class Peer:
    """Another router whose models are listed here as ``NAME/model`` (``--peer``, [[peers]])."""

    name: str
    upstream: Upstream
