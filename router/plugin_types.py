"""The data that hooks receive and return: plain frozen values, no framework objects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from router.settings import RouterSettings


@dataclass(frozen=True)
class RequestInfo:
    """The HTTP request, as hooks see it."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]
    client: str  # the peer's address

    def bearer_token(self) -> str:
        """The key the client sent (``Authorization: Bearer`` or ``x-api-key``), or ""."""
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return self.headers.get("x-api-key", "")


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    name: str
    is_admin: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Denial:
    """A refusal, with the HTTP status and message the client gets."""

    message: str
    status: int = 403
    retry_after_s: int | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ModelInfo:
    """One model as hooks see it."""

    id: str
    path: Path | None
    aliases: tuple[str, ...]
    status: str
    in_flight: int
    last_used: float
    args: Mapping[str, Any]
    is_pinned: bool


class PluginContext:
    """The router, for hooks: its settings, its models now, a nursery for background work."""

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
        return self._models()
