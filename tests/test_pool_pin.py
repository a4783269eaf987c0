"""Pinning at run time (``ModelPool.set_pinned``, ``POST /models/pin``): a pinned model is never
evicted nor unloaded when idle; the pin is announced on the hub and lasts until the model's
file changes its ``pinned``. A stand-in supervisor: no processes."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from router.models.events import MODEL_PIN, Event
from router.models.pool import ModelPool
from router.models.scheduler import Status
from router.models.state import ModelState
from router.spec import ModelSpec
from tests.test_pool import attached_pool


def spec(name: str, **settings: object) -> ModelSpec:
    return ModelSpec(id=name, path=Path(f"{name}.gguf"), **settings)  # type: ignore[arg-type]


async def loaded(pool: ModelPool, model: str) -> None:
    """Load ``model`` with one request, which then finishes: it is loaded and idle."""

    async def use() -> None:
        async with pool.lease(pool.models[model], autoload=True):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(use)
        await trio.testing.wait_all_tasks_blocked()
        pool.child_ready(model, f"unix:/nonexistent-{model}.sock", 1)
    assert pool.models[model].status is Status.LOADED


async def test_a_pinned_model_is_not_evicted_until_it_is_unpinned(
    nursery: trio.Nursery,
) -> None:
    pool, supervisor = attached_pool({"a": spec("a"), "b": spec("b")}, nursery, models_max=1)
    events: list[Event] = []
    pool.events.listen(events.append)
    await loaded(pool, "a")
    pool.set_pinned(pool.models["a"], True)
    assert pool.models["a"].is_pinned
    assert [e for e in events if e.event == MODEL_PIN] == [Event("a", MODEL_PIN, {"pinned": True})]

    served = trio.Event()

    async def use_b() -> None:
        async with pool.lease(pool.models["b"], autoload=True):
            served.set()

    nursery.start_soon(use_b)
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.stopped == [] and pool.waiting("b") == 1  # a keeps its slot

    pool.set_pinned(pool.models["a"], False)  # b's request now evicts it
    assert pool.models["a"].status is Status.UNLOADING
    await trio.testing.wait_all_tasks_blocked()  # its connections closed first, then stopped
    assert supervisor.stopped == ["a"]
    assert [e.data for e in events if e.event == MODEL_PIN] == [{"pinned": True}, {"pinned": False}]


async def test_a_pinned_model_outlives_its_ttl(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool({"a": spec("a", ttl_s=5.0)}, nursery, models_max=1)
    nursery.start_soon(pool.run_idle_timers)
    await loaded(pool, "a")
    pool.set_pinned(pool.models["a"], True)
    await trio.sleep(60)
    assert supervisor.stopped == []
    pool.set_pinned(pool.models["a"], False)
    await trio.sleep(6)
    assert supervisor.stopped == ["a"]


def is_pinned(state: ModelState) -> bool:
    """``state.is_pinned``, read anew each time (no type checker's narrowing across calls)."""
    return state.is_pinned


async def test_the_files_pinned_setting_replaces_a_run_time_pin(nursery: trio.Nursery) -> None:
    pool, _ = attached_pool({"a": spec("a")}, nursery, models_max=1)
    state = pool.models["a"]
    pool.set_pinned(state, True)
    pool.apply_catalog({"a": spec("a", ttl_s=30.0)}, {})  # another setting: the pin stays
    assert is_pinned(state)
    pool.apply_catalog({"a": spec("a", ttl_s=30.0, is_pinned=True)}, {})
    assert is_pinned(state) and state.pinned_at_run_time is None
    pool.set_pinned(state, False)
    assert not is_pinned(state)
    pool.apply_catalog({"a": spec("a", ttl_s=30.0)}, {})  # the file unpins it too: as it says
    assert not is_pinned(state) and state.pinned_at_run_time is None
    pool.set_pinned(state, True)
    pool.apply_catalog({"a": spec("a", ttl_s=30.0, is_pinned=True)}, {})
    pool.apply_catalog({"a": spec("a", ttl_s=30.0)}, {})
    assert not is_pinned(state)  # the file's latest word
