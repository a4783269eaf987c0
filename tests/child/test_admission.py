"""The admission queue: FIFO order, bounded waiting, and waiters that leave."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from router.child.admission import Admission
from router.errors import QueueFull


async def test_requests_beyond_capacity_wait_in_arrival_order() -> None:
    admission = Admission(capacity=1, max_waiting=10)
    order: list[int] = []

    async def request(number: int, hold_s: float) -> None:
        async with admission.slot():
            order.append(number)
            await trio.sleep(hold_s)

    async with trio.open_nursery() as nursery:
        for number in range(5):
            nursery.start_soon(request, number, 1.0)
            await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4]


async def test_full_queue_refuses_at_once(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(capacity=1, max_waiting=1)
    release = trio.Event()

    async def hold() -> None:
        async with admission.slot():
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        assert (admission.running, admission.waiting) == (1, 1)
        with pytest.raises(QueueFull) as caught:
            async with admission.slot():
                pass
        assert caught.value.headers() == {"Retry-After": "1"}
        assert caught.value.status == 429
        release.set()
    assert (admission.running, admission.waiting) == (0, 0)


async def test_a_waiter_that_leaves_gives_up_its_place() -> None:
    admission = Admission(capacity=1, max_waiting=1)
    release = trio.Event()
    served: list[str] = []

    async def hold() -> None:
        async with admission.slot():
            await release.wait()

    async def serve(name: str, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with admission.slot():
                served.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        leaving = await nursery.start(serve, "gone")
        await trio.testing.wait_all_tasks_blocked()
        assert admission.waiting == 1
        leaving.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert admission.waiting == 0
        await nursery.start(serve, "next")  # the freed place is taken: no 429
        release.set()
    assert served == ["next"]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
