"""``--sleep-idle-seconds``: a model idle that long sleeps (its child stops, its memory is
freed; status ``sleeping``, as llama-server reports it) and the next request wakes it. It is
the models' idle ttl under llama-server's name: one timer, on trio's fake clock here, then a
real router with a tiny model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trio
import trio.testing

from router.errors import SettingsError
from router.models.events import Event
from router.models.pool import ModelPool
from router.models.scheduler import Status
from router.settings import RouterSettings
from router.spec import ModelSpec
from tests.processes import RouterProcess, pid_is_alive, running_router
from tests.test_pool import RecordingSupervisor, attached_pool
from tests.test_pool_rules import STOPPED, loaded, use
from tests.tiny_models import write_tiny_llama


def pool_of(
    nursery: trio.Nursery, *specs: ModelSpec, models_max: int = 1
) -> tuple[ModelPool, RecordingSupervisor, list[Event]]:
    pool, supervisor = attached_pool(
        {spec.id: spec for spec in specs}, nursery, models_max=models_max, sleep_idle_s=30
    )
    events: list[Event] = []
    pool.events.listen(events.append)
    nursery.start_soon(pool.run_idle_timers)
    return pool, supervisor, events


async def test_an_idle_model_sleeps_and_the_next_request_wakes_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor, events = pool_of(nursery, ModelSpec(id="m", path=Path("m.gguf")))
    nursery.start_soon(use, pool, "m", [])
    await loaded(pool, supervisor, "m")
    await trio.sleep(29)
    assert supervisor.stopped == []
    await trio.sleep(2)
    assert supervisor.stopped == ["m"]
    pool.child_exited("m", STOPPED)
    assert pool.models["m"].status is Status.SLEEPING
    assert events[-1].data == {"status": "sleeping", "exit_code": 0}
    async with trio.open_nursery() as waking:
        waking.start_soon(lambda: _lease_without_autoload(pool))
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.started == ["m", "m"]  # woken although autoload is off
        assert events[-1].data == {"status": "loading", "wake": True}
        pool.child_ready("m", "unix:/m.sock", 2)
    assert pool.models["m"].view().status is Status.LOADED


async def _lease_without_autoload(pool: ModelPool) -> None:
    async with pool.lease(pool.models["m"], autoload=False):
        pass


async def test_a_models_own_ttl_wins_over_sleep_idle_seconds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor, _ = pool_of(nursery, ModelSpec(id="m", path=Path("m.gguf"), ttl_s=5))
    nursery.start_soon(use, pool, "m", [])
    await loaded(pool, supervisor, "m")
    await trio.sleep(6)
    assert supervisor.stopped == ["m"]


async def test_a_sleeping_model_holds_no_slot(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    specs = (ModelSpec(id="m", path=Path("m.gguf")), ModelSpec(id="n", path=Path("n.gguf")))
    pool, supervisor, _ = pool_of(nursery, *specs, models_max=1)
    nursery.start_soon(use, pool, "m", [])
    await loaded(pool, supervisor, "m")
    await trio.sleep(31)
    pool.child_exited("m", STOPPED)
    served: list[str] = []
    nursery.start_soon(use, pool, "n", served)
    await loaded(pool, supervisor, "n")
    assert served == ["n"]
    assert supervisor.stopped == ["m"]  # nothing else stopped to make room
    assert pool.models["m"].status is Status.SLEEPING


async def test_unloading_a_sleeping_model_makes_it_unloaded(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, supervisor, _ = pool_of(nursery, ModelSpec(id="m", path=Path("m.gguf")))
    nursery.start_soon(use, pool, "m", [])
    await loaded(pool, supervisor, "m")
    await trio.sleep(31)
    pool.child_exited("m", STOPPED)
    pool.request_unload(pool.models["m"])
    assert pool.models["m"].status is Status.UNLOADED


@pytest.mark.parametrize("seconds", [0, -2])
def test_sleep_idle_seconds_is_minus_one_or_positive(seconds: int) -> None:
    with pytest.raises(SettingsError, match="--sleep-idle-seconds"):
        RouterSettings(sleep_idle_seconds=seconds)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    write_tiny_llama(tmp_path / "tiny.gguf")
    # No spares: a stopped child's process then exits (a spare's would wait for another
    # model, its model freed), so that the test sees the memory go with the process.
    args = ("--sleep-idle-seconds", "1", "--spares", "0", "-c", "256")
    with running_router(tmp_path, *args) as router:
        yield router


def status_of(router: RouterProcess) -> str:
    [entry] = httpx.get(f"{router.base_url}/models").json()["data"]
    return str(entry["status"]["value"])


def wait_for(router: RouterProcess, status: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while status_of(router) != status:
        assert time.monotonic() < deadline, f"timed out waiting for {status}"
        time.sleep(0.05)


def test_a_real_router_puts_an_idle_model_to_sleep_and_wakes_it(router: RouterProcess) -> None:
    client = openai.OpenAI(base_url=router.openai_base_url, api_key="none", max_retries=0)
    client.completions.create(model="tiny", prompt="hi", max_tokens=1)
    pid = router.child_pids()["tiny"]
    wait_for(router, "sleeping")
    assert "tiny" not in router.child_pids()
    deadline = time.monotonic() + 10
    while pid_is_alive(pid):  # its memory is freed: the process is gone
        assert time.monotonic() < deadline, "the sleeping model's child still runs"
        time.sleep(0.05)
    answer = client.completions.create(model="tiny", prompt="hi", max_tokens=1)
    assert answer.choices[0].text is not None
    assert "model tiny sleeps until its next request" in router.stderr_text()
    assert "loading model tiny (waking)" in router.stderr_text()
