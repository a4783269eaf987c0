"""The pool's bookkeeping, with a stand-in supervisor: no processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from router.errors import Unavailable
from router.hooks.plugin_types import PluginContext
from router.models.pool import ModelPool
from router.models.scheduler import Status
from router.server import load_router_plugins
from router.settings import RouterSettings
from router.spec import ModelSpec

SETTINGS = RouterSettings(load_installed_plugins=False)


class RecordingSupervisor:
    """Records what the pool asks for; the test plays the children's part."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.running: list[bool] = []  # what requests_running was told, in order

    def start(self, spec: ModelSpec, *, extra_args: tuple[str, ...] = ()) -> list[str]:
        self.started.append(spec.id)
        return ["child", spec.id]

    def stop(self, model_id: str) -> None:
        self.stopped.append(model_id)

    def requests_running(self, are_running: bool) -> None:
        self.running.append(are_running)


def attached_pool(
    specs: dict[str, ModelSpec], nursery: trio.Nursery, **options: Any
) -> tuple[ModelPool, RecordingSupervisor]:
    """A pool with the built-in plugins, loaded as the server loads them, attached to a
    recording supervisor."""
    pool = ModelPool(specs, plugins=load_router_plugins(SETTINGS), **options)
    supervisor = RecordingSupervisor()
    pool.attach(supervisor, nursery, PluginContext(SETTINGS, nursery, pool.hooks.catalog))  # type: ignore[arg-type]
    return pool, supervisor


def new_pool(nursery: trio.Nursery) -> tuple[ModelPool, RecordingSupervisor]:
    return attached_pool({"m": ModelSpec(id="m", path=Path("m.gguf"))}, nursery, models_max=1)


async def test_a_request_cancelled_at_admission_gives_its_slot_back(
    nursery: trio.Nursery,
) -> None:
    pool, supervisor = new_pool(nursery)
    scope = trio.CancelScope()

    async def use_within_scope() -> None:
        with scope:
            await _use_once(pool)

    async with trio.open_nursery() as loading:
        loading.start_soon(use_within_scope)
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.started == ["m"]
        pool.child_ready("m", "unix:/nonexistent.sock", 1)  # admits the waiting request...
        assert pool.models["m"].in_flight == 1
        scope.cancel()  # ...which is cancelled before it resumes
    assert pool.models["m"].status is Status.LOADED
    assert pool.models["m"].in_flight == 0  # not busy for ever: it can still be evicted
    assert supervisor.running == [True, False]  # and the spares run again
    with trio.CancelScope() as already:
        already.cancel()  # a loaded model's request, cancelled before it asks
        async with pool.lease(pool.models["m"], autoload=True):
            raise AssertionError("a cancelled request must not get the model")
    assert pool.models["m"].in_flight == 0
    assert supervisor.running == [True, False]


async def test_the_supervisor_hears_when_requests_start_and_stop_running(
    nursery: trio.Nursery,
) -> None:
    """Only the first request in and the last one out change anything (the supervisor
    pauses its importing spares in between), whichever models they are for."""
    specs = {name: ModelSpec(id=name, path=Path(f"{name}.gguf")) for name in ("a", "b")}
    pool, supervisor = attached_pool(specs, nursery, models_max=2)
    release = {name: trio.Event() for name in specs}

    async def hold(name: str) -> None:
        async with pool.lease(pool.models[name], autoload=True):
            await release[name].wait()

    for name in specs:
        nursery.start_soon(hold, name)
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.running == []  # waiting for a load is not running
    for name in specs:
        pool.child_ready(name, "unix:/nonexistent.sock", 1)
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.running == [True]
    release["a"].set()
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.running == [True]  # b still runs
    release["b"].set()
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.running == [True, False]


async def _use_once(pool: ModelPool) -> None:
    async with pool.lease(pool.models["m"], autoload=True):
        pass


async def test_a_request_waits_for_a_slot_only_until_its_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    specs = {name: ModelSpec(id=name, path=Path(f"{name}.gguf")) for name in ("a", "b")}
    pool, _ = attached_pool(specs, nursery, models_max=1, slot_timeout_s=30)
    holding = trio.Event()
    release = trio.Event()

    async def hold_a() -> None:
        async with pool.lease(pool.models["a"], autoload=True):
            holding.set()
            await release.wait()

    nursery.start_soon(hold_a)
    await trio.testing.wait_all_tasks_blocked()
    pool.child_ready("a", "unix:/nonexistent.sock", 1)
    await holding.wait()
    started = trio.current_time()
    with pytest.raises(Unavailable) as caught:
        async with pool.lease(pool.models["b"], autoload=True):
            raise AssertionError("b has no slot while a is busy")
    assert trio.current_time() - started == pytest.approx(30)
    assert caught.value.headers()["Retry-After"].isdigit()
    assert "no slot freed" in caught.value.message
    assert not [w for w in pool._queue if w.model == "b"]  # it left the queue
    release.set()


async def test_a_request_whose_model_is_loading_waits_past_the_slot_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor = new_pool(nursery)
    pool.slot_timeout_s = 5
    served = trio.Event()

    async def use() -> None:
        async with pool.lease(pool.models["m"], autoload=True):
            served.set()

    nursery.start_soon(use)
    await trio.sleep(60)  # a slow load: longer than the slot deadline
    assert supervisor.started == ["m"] and not served.is_set()
    pool.child_ready("m", "unix:/nonexistent.sock", 1)
    await served.wait()
