"""What the router knows of one model, whatever found it (a models folder or conf.d): the data
every layer passes around, so it lives below them all."""

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
    source: str = "dir"  # "dir" or "file"
    source_file: Path | None = None
    description: str = ""
    command: tuple[str, ...] | None = None  # an OpenAI-compatible server to run instead
    health: str = "/health"  # for 'command' models: polled until it answers 200
    ttl_s: float = 0.0  # idle seconds before unloading; 0: never
    load_on_startup: bool = False
    is_pinned: bool = False
    stop_timeout_s: float | None = None  # None: the router's --stop-timeout
    max_queue: int | None = None  # requests that may wait for it; None: no limit
    args: Mapping[str, Any] = field(default_factory=dict)  # child options (CHILD_OPTIONS)
    env: Mapping[str, str] = field(default_factory=dict)
