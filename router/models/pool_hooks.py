"""What plugins see of the models, and the hooks the pool calls while it decides.

The pool's own logic knows nothing of pluggy: it reports status changes here and asks here
which model to evict and whether a model fits. A plugin that fails is named in the log and
skipped (the next one, in the end the built-in rule, decides); a status report's awaitable runs
in the chores nursery, never in the way of a decision.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import trio

from router.child_options import effective_child_options
from router.errors import PluginFailed
from router.hooks.plugin_types import ModelInfo, PluginContext
from router.hooks.plugins import Plugins, call_each_now, call_first_now
from router.models.scheduler import ModelView, Status
from router.models.state import ModelState

log = logging.getLogger("router.models.pool_hooks")


class PoolHooks:
    """The pool's side of the plugin interface, over the pool's ``models``."""

    def __init__(
        self,
        plugins: Plugins,
        models: Mapping[str, ModelState],
        child_defaults: Mapping[str, Any],
        child_options: Mapping[str, Any],
    ) -> None:
        self._plugins = plugins
        self._models = models
        self._child_defaults = child_defaults  # to show plugins the effective options
        self._child_options = child_options
        self._nursery: trio.Nursery | None = None
        self.context: PluginContext | None = None

    def attach(self, nursery: trio.Nursery, context: PluginContext | None) -> None:
        """The nursery for status reports' awaitables, and what plugins see of the router."""
        self._nursery = nursery
        self.context = context

    def info(self, state: ModelState) -> ModelInfo:
        """``state`` as plugins see it."""
        return ModelInfo(
            id=state.spec.id,
            path=state.spec.path,
            aliases=state.spec.aliases,
            status=state.status.value,
            in_flight=state.in_flight,
            last_used=state.last_used,
            args=effective_child_options(state.spec, self._child_defaults, self._child_options),
            is_pinned=state.is_pinned,
        )

    def catalog(self) -> Mapping[str, ModelInfo]:
        """The listed models as plugins see them, built only as far as a hook looks."""
        return _Catalog(self._models, self.info)

    def report_status(self, model_id: str, old: Status, new: Status, detail: str) -> None:
        """Tell ``model_status`` hooks; a failing one never stops the router."""
        try:
            results = call_each_now(
                self._plugins, "model_status",
                model=model_id, old=old.value, new=new.value, detail=detail,
            )  # fmt: skip
        except PluginFailed:
            return  # logged by the plugin layer
        for result in results:
            if inspect.isawaitable(result) and self._nursery is not None:
                self._nursery.start_soon(_await_quietly, result)

    def choose_victim(self, candidates: Sequence[ModelView], incoming: str) -> str | None:
        """The model to evict for ``incoming`` (``choose_eviction``), among ``candidates``."""
        try:
            victim = call_first_now(
                self._plugins, "choose_eviction",
                candidates=[self.info(self._models[c.id]) for c in candidates],
                incoming=incoming, router=self.context,
            )  # fmt: skip
        except PluginFailed:
            return None  # a hook wrapper failed (logged); a failing implementation is skipped
        return victim if victim in {c.id for c in candidates} else None

    def fits(self, incoming: str, holding: Sequence[str]) -> bool:
        """Whether ``incoming`` fits beside the models ``holding`` a slot (``model_fits``)."""
        try:
            verdict = call_first_now(
                self._plugins, "model_fits",
                incoming=self.info(self._models[incoming]),
                loaded=[self.info(self._models[m]) for m in holding if m in self._models],
                router=self.context,
            )  # fmt: skip
        except PluginFailed:
            return True
        return verdict is not False


class _Catalog(Mapping[str, ModelInfo]):
    """A read-only view of the models that builds each ModelInfo on access: the default
    resolver only asks ``requested in catalog`` on every request."""

    def __init__(
        self, models: Mapping[str, ModelState], info: Callable[[ModelState], ModelInfo]
    ) -> None:
        self._models = models
        self._info = info

    def __getitem__(self, model_id: str) -> ModelInfo:
        state = self._models.get(model_id)
        if state is None or state.is_retired:
            raise KeyError(model_id)
        return self._info(state)

    def __contains__(self, model_id: object) -> bool:
        state = self._models.get(model_id) if isinstance(model_id, str) else None
        return state is not None and not state.is_retired

    def __iter__(self) -> Iterator[str]:
        return iter([m for m, state in self._models.items() if not state.is_retired])

    def __len__(self) -> int:
        return sum(1 for state in self._models.values() if not state.is_retired)


async def _await_quietly(awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("a plugin's background work failed")
