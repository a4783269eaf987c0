"""A client's ``keep_alive`` (Ollama's API) as the idle ttl of the child running now, on a
mock clock with a stand-in supervisor."""

from __future__ import annotations

import math
from pathlib import Path

import trio
import trio.testing

from router.models.pool import ModelPool
from router.models.scheduler import Status
from router.processes.supervisor import ChildExit
from router.spec import ModelSpec
from tests.test_pool import RecordingSupervisor, attached_pool


async def loaded_pool(
    nursery: trio.Nursery, ttl_s: float = 0.0, *, is_pinned: bool = False
) -> tuple[ModelPool, RecordingSupervisor]:
    """A pool whose model ``m`` (with ``ttl_s``) is loaded and idle, its idle timers running."""
    spec = ModelSpec(id="m", path=Path("m.gguf"), ttl_s=ttl_s, is_pinned=is_pinned)
    pool, supervisor = attached_pool({"m": spec}, nursery, models_max=1)
    nursery.start_soon(pool.run_idle_timers)

    async def use() -> None:
        async with pool.lease(pool.models["m"], autoload=True):
            pass

    async with trio.open_nursery() as loading:
        loading.start_soon(use)
        await trio.testing.wait_all_tasks_blocked()
        pool.child_ready("m", "unix:/nonexistent.sock", 1)
    return pool, supervisor


async def test_keep_alive_unloads_an_idle_model_after_its_seconds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = await loaded_pool(nursery)  # its own ttl: never
    pool.keep_alive(pool.models["m"], 120)
    await trio.sleep(119)
    assert supervisor.stopped == []
    await trio.sleep(2)
    assert supervisor.stopped == ["m"]


async def test_keep_alive_0_unloads_once_idle(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = await loaded_pool(nursery)
    pool.keep_alive(pool.models["m"], 0)
    await trio.sleep(0.001)
    assert supervisor.stopped == ["m"]
    assert pool.models["m"].status is Status.UNLOADING


async def test_keep_alive_for_ever_outlasts_the_models_ttl_until_its_child_exits(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = await loaded_pool(nursery, ttl_s=30)
    state = pool.models["m"]
    pool.keep_alive(state, math.inf)
    await trio.sleep(3600)
    assert supervisor.stopped == []
    pool.child_exited("m", ChildExit(exit_code=0, last_error="", was_stopped=True, was_ready=True))
    assert state.keep_alive_s is None  # the next child has the model's own ttl
    assert state.idle_ttl_s == 30
