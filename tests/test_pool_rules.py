"""The pool's rules on trio's fake clock, with a stand-in supervisor: ttl, backoff, eviction,
first in first out, and coalesced loads. No processes, no real time."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from router.errors import Unavailable
from router.models.pool import ModelPool
from router.models.scheduler import Status
from router.processes.supervisor import ChildExit
from router.spec import ModelSpec
from tests.test_pool import RecordingSupervisor, attached_pool

LOAD_FAILED = ChildExit(exit_code=1, last_error="bad file", was_stopped=False, was_ready=False)
STOPPED = ChildExit(exit_code=0, last_error="", was_stopped=True, was_ready=True)


def specs(*names: str, ttl_s: float = 0.0) -> dict[str, ModelSpec]:
    return {name: ModelSpec(id=name, path=Path(f"{name}.gguf"), ttl_s=ttl_s) for name in names}


async def use(
    pool: ModelPool, model: str, served: list[str], hold: trio.Event | None = None
) -> None:
    async with pool.lease(pool.models[model], autoload=True):
        served.append(model)
        if hold is not None:
            await hold.wait()


async def loaded(pool: ModelPool, supervisor: RecordingSupervisor, model: str) -> None:
    """Play the child: become ready once the pool has started it."""
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.started[-1] == model
    pool.child_ready(model, f"unix:/{model}.sock", 1)
    await trio.testing.wait_all_tasks_blocked()


async def test_an_idle_model_is_unloaded_after_its_ttl(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool(specs("m", ttl_s=30), nursery, models_max=2)
    nursery.start_soon(pool.run_idle_timers)
    served: list[str] = []
    nursery.start_soon(use, pool, "m", served)
    await loaded(pool, supervisor, "m")
    assert served == ["m"]
    await trio.sleep(29)
    assert supervisor.stopped == []  # idle time counts from the end of its request
    await trio.sleep(2)
    assert supervisor.stopped == ["m"]
    assert pool.models["m"].status is Status.UNLOADING


async def test_a_model_that_keeps_failing_is_restarted_only_after_a_backoff(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool(specs("m"), nursery, models_max=1)
    served: list[str] = []
    refusals: list[str] = []

    async def try_to_use() -> None:
        try:
            await use(pool, "m", served)
        except Unavailable as exc:
            refusals.append(exc.message)

    for attempt in (1, 2):
        nursery.start_soon(try_to_use)
        await trio.testing.wait_all_tasks_blocked()
        assert len(supervisor.started) == attempt  # the first retry is at once
        pool.child_exited("m", LOAD_FAILED)
        await trio.testing.wait_all_tasks_blocked()
        assert "failed to load: bad file" in refusals[-1]
    with pytest.raises(Unavailable, match="failed 2 times in a row"):
        await use(pool, "m", served)
    assert len(supervisor.started) == 2
    await trio.sleep(1)  # backoff_s(2)
    nursery.start_soon(use, pool, "m", served)
    await loaded(pool, supervisor, "m")
    assert len(supervisor.started) == 3 and served == ["m"]


async def test_the_least_recently_used_idle_model_makes_room(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool(specs("a", "b", "c"), nursery, models_max=2)
    served: list[str] = []
    for model in ("a", "b"):
        nursery.start_soon(use, pool, model, served)
        await loaded(pool, supervisor, model)
        await trio.sleep(1)
    nursery.start_soon(use, pool, "a", served)  # a is now the most recently used
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(1)
    nursery.start_soon(use, pool, "c", served)
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.stopped == ["b"]
    pool.child_exited("b", STOPPED)
    await loaded(pool, supervisor, "c")
    assert served == ["a", "b", "a", "c"]


async def test_requests_waiting_for_a_slot_are_served_first_in_first_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool(specs("a", "b", "c"), nursery, models_max=1)
    served: list[str] = []
    release = trio.Event()
    nursery.start_soon(use, pool, "a", served, release)
    await loaded(pool, supervisor, "a")
    for model in ("b", "c"):
        nursery.start_soon(use, pool, model, served)
        await trio.testing.wait_all_tasks_blocked()
    assert supervisor.stopped == []  # a is busy: never evicted
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.stopped == ["a"]
    pool.child_exited("a", STOPPED)
    await loaded(pool, supervisor, "b")  # b asked first
    assert served == ["a", "b"]
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.stopped == ["a", "b"]
    pool.child_exited("b", STOPPED)
    await loaded(pool, supervisor, "c")
    assert served == ["a", "b", "c"]


async def test_concurrent_requests_for_a_model_share_one_load(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool(specs("m"), nursery, models_max=1)
    served: list[str] = []
    for _ in range(8):
        nursery.start_soon(use, pool, "m", served)
    await loaded(pool, supervisor, "m")
    assert supervisor.started == ["m"]
    assert served == ["m"] * 8


async def test_a_clients_args_do_not_outlive_a_load_that_never_began(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = attached_pool(specs("a", "b"), nursery, models_max=1, slot_timeout_s=5)
    served: list[str] = []
    release = trio.Event()
    nursery.start_soon(use, pool, "a", served, release)
    await loaded(pool, supervisor, "a")
    pool.request_load(pool.models["b"], nursery, extra_args=("-c", "256"))
    await trio.sleep(6)  # no slot freed in time: the load never began
    assert supervisor.started == ["a"]
    assert pool.models["b"].extra_args == ()  # a later autoload runs the operator's settings
    release.set()
