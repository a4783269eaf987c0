"""Built-in eviction: the least recently used idle model."""

from __future__ import annotations

from collections.abc import Sequence

from router.hooks.hookspecs import hookimpl
from router.hooks.plugin_types import ModelInfo
from router.models.scheduler import least_recently_used
from router.settings import RouterSettings


class LeastRecentlyUsed:
    name = "lru"

    def __init__(self, settings: RouterSettings) -> None:
        del settings  # nothing to configure

    @hookimpl(trylast=True)
    def choose_eviction(self, candidates: Sequence[ModelInfo]) -> str | None:
        return least_recently_used(candidates)
