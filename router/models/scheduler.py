"""The rules of who runs, as pure functions: a snapshot of the models and the queue in, decisions
out. No I/O, no clocks, no processes: every rule is unit-tested on plain values.

The rules:

* A request for a loaded model is admitted at once; one for a loading model waits for that load
  (requests for the same model share one load).
* A request for an unloaded model needs a slot (``models_max``; 0 is unlimited). A free slot is
  taken; else a slot already being freed (a model unloading) is waited for; else one idle model is
  evicted (least recently used by default; a model with requests in flight or pinned is never
  evicted). Several requests that free the same slot cause one eviction, not several.
* An idle model is put to sleep once its ttl runs out, unless it is pinned: its child stops
  (its memory is freed) and it shows ``sleeping``, as llama-server's ``--sleep-idle-seconds``
  does; for slots a sleeping model is an unloaded one, and the next request wakes it.
* The queue is first in, first out: a request that needs a slot and cannot have one (every
  model busy or pinned) makes the requests behind it that need slots wait too (requests for
  loaded models still pass).
* A model that failed to start several times in a row is not restarted before its backoff ends;
  requests for it are refused with the reason.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Status(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    REMOTE = "remote"  # served elsewhere (models/remote.py): never loaded, never holds a slot
    SLEEPING = "sleeping"  # stopped after idling for its ttl; the next request wakes it


HOLDS_NO_CHILD = frozenset({Status.UNLOADED, Status.SLEEPING})  # a request for it loads it
HOLDS_A_SLOT = frozenset({Status.LOADING, Status.LOADED, Status.UNLOADING})
NEEDS_NO_LOAD = frozenset({Status.LOADED, Status.REMOTE})  # a request for it waits for no load


@dataclass(frozen=True)
class ModelView:
    """What the scheduler may know of one model."""

    id: str
    status: Status
    in_flight: int = 0
    last_used: float = 0.0  # when its last request finished (monotonic seconds)
    is_pinned: bool = False
    retry_at: float = -math.inf  # backoff: not restarted before this time
    ttl_s: float = 0.0  # unloaded after this long idle; 0: never

    @property
    def is_idle(self) -> bool:
        return self.status is Status.LOADED and self.in_flight == 0


@dataclass(frozen=True)
class Waiting:
    """One queued request: its ticket and the model it wants."""

    ticket: int
    model: str


@dataclass(frozen=True)
class Plan:
    admit: tuple[int, ...] = ()  # tickets whose model is loaded: serve them now
    refuse: tuple[int, ...] = ()  # tickets whose model is backing off after failures
    load: tuple[str, ...] = ()
    unload: tuple[str, ...] = ()


ChooseVictim = Callable[[Sequence[ModelView], str], str | None]  # (candidates, incoming)
Fits = Callable[[str, Sequence[str]], bool]  # (incoming, models holding a slot)


class HasRecency(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def last_used(self) -> float: ...


def least_recently_used(candidates: Sequence[HasRecency], incoming: str = "") -> str | None:
    """The default eviction: the idle model whose last request finished longest ago."""
    if not candidates:
        return None
    return min(candidates, key=lambda model: (model.last_used, model.id)).id


def plan(
    models: Mapping[str, ModelView],
    queue: Sequence[Waiting],
    *,
    models_max: int,
    now: float,
    choose_victim: ChooseVictim = least_recently_used,
    fits: Fits = lambda _incoming, _holding: True,
) -> Plan:
    """Decide what to do next for ``queue`` (oldest first) given ``models``.

    ``choose_victim`` picks the model to evict (plugins: ``choose_eviction``); ``fits`` may say
    that a model needs room even below ``models_max`` (plugins: ``model_fits``).
    """
    capacity = math.inf if models_max <= 0 else models_max
    free = capacity - sum(1 for m in models.values() if m.status in HOLDS_A_SLOT)
    being_freed = sum(1 for m in models.values() if m.status is Status.UNLOADING)
    wanted = {waiting.model for waiting in queue}
    admit: list[int] = []
    refuse: list[int] = []
    load: list[str] = []
    unload: list[str] = []
    claimed: set[str] = set()  # models that already have (or await) a slot this round
    is_blocked = False
    for waiting in queue:
        model = models[waiting.model]
        if model.status is Status.LOADED:
            admit.append(waiting.ticket)
            continue
        if model.status not in HOLDS_NO_CHILD or model.id in claimed:
            continue  # loading, unloading before it can load again, or already served: wait
        if now < model.retry_at:
            refuse.append(waiting.ticket)
            continue
        if is_blocked:
            continue
        claimed.add(model.id)
        holding = [m.id for m in models.values() if m.status in HOLDS_A_SLOT and m.id not in unload]
        if free > 0 and fits(model.id, [*holding, *load]):
            free -= 1
            load.append(model.id)
        elif being_freed > 0:
            being_freed -= 1  # an unload under way frees the slot this model needs
        else:
            candidates = [
                m
                for m in models.values()
                if m.is_idle and not m.is_pinned and m.id not in unload and m.id not in wanted
            ]
            victim = choose_victim(candidates, model.id)
            if victim is not None:
                unload.append(victim)
            else:
                claimed.discard(model.id)
                is_blocked = True  # first in, first out: later slot seekers wait behind it
    return Plan(tuple(admit), tuple(refuse), tuple(load), tuple(unload))


def idle_expired(models: Sequence[ModelView], now: float) -> tuple[list[str], float]:
    """The idle models whose ttl has run out, and when the next one will (inf: none).

    Idle time counts from the end of the last request, never from its start. A pinned model
    never expires (it may have a ttl from its file and a pin from ``POST /models/pin``).
    """
    expired: list[str] = []
    next_deadline = math.inf
    for model in models:
        if model.ttl_s <= 0 or model.is_pinned or not model.is_idle:
            continue
        deadline = model.last_used + model.ttl_s
        if deadline <= now:
            expired.append(model.id)
        else:
            next_deadline = min(next_deadline, deadline)
    return expired, next_deadline


def backoff_s(consecutive_failures: int) -> float:
    """How long to wait before restarting a model that failed this many times in a row.

    The first failure is retried at once (the next request restarts it); after that 1 s,
    2 s, 4 s... up to a minute, so a broken model is never restarted in a hot loop.
    """
    if consecutive_failures <= 1:
        return 0.0
    return float(min(60, 2 ** (consecutive_failures - 2)))
