"""``ClientWatch``: a request that lasts is cancelled when its client leaves; a quick one is
never watched (its ``receive`` is never called); errors come out as themselves. Virtual time
(pytest-trio's ``autojump_clock``): the waits are exact, and nothing sleeps for real.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from router.edge.asgi_lifespan import Message
from router.edge.client_watch import WATCH_AFTER_S, ClientWatch

WAIT_S = 30.0


async def never_called() -> Message:
    raise AssertionError("a quick request's client was watched")


async def test_a_quick_request_is_never_watched(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = ClientWatch()
    asked: list[float] = []

    async def receive() -> Message:
        asked.append(trio.current_time())
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    for _ in range(3):
        async with watch.cancelled_when_the_client_leaves(receive, nursery):
            await trio.sleep(WATCH_AFTER_S / 2)
    await trio.sleep(WATCH_AFTER_S * 10)  # the alarm set for them goes off meanwhile
    assert asked == []


async def test_a_request_that_lasts_is_cancelled_when_its_client_leaves(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = ClientWatch()
    leaves = trio.Event()
    asked_at: list[float] = []

    async def receive() -> Message:
        asked_at.append(trio.current_time())
        await leaves.wait()
        return {"type": "http.disconnect"}

    start = trio.current_time()
    nursery.start_soon(_leave_after, leaves, 5.0)
    with trio.fail_after(WAIT_S):
        async with watch.cancelled_when_the_client_leaves(receive, nursery):
            await trio.sleep_forever()
    assert asked_at == [pytest.approx(start + WATCH_AFTER_S)]
    assert trio.current_time() == pytest.approx(start + 5.0)


async def test_each_of_many_requests_is_watched_once_it_has_lasted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = ClientWatch()
    leaves = trio.Event()
    watched: list[tuple[int, float]] = []
    start = trio.current_time()

    async def request(number: int) -> None:
        async def receive() -> Message:
            watched.append((number, trio.current_time() - start))
            await leaves.wait()
            return {"type": "http.disconnect"}

        async with watch.cancelled_when_the_client_leaves(receive, nursery):
            await trio.sleep_forever()

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as requests:
            for number in range(3):
                requests.start_soon(request, number)
                await trio.sleep(WATCH_AFTER_S / 4)
            await trio.sleep(1.0)
            leaves.set()
    assert [number for number, _ in watched] == [0, 1, 2]
    for number, at in watched:
        assert at == pytest.approx(number * WATCH_AFTER_S / 4 + WATCH_AFTER_S)


async def test_a_watched_request_that_ends_ends_its_watch(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = ClientWatch()

    async def client_stays() -> Message:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.fail_after(WAIT_S):
        async with watch.cancelled_when_the_client_leaves(client_stays, nursery):
            await trio.sleep(WATCH_AFTER_S * 5)


@pytest.mark.parametrize("lasts_s", [0.0, WATCH_AFTER_S * 2], ids=["quick", "watched"])
async def test_an_error_comes_out_as_itself(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, lasts_s: float
) -> None:
    watch = ClientWatch()

    async def client_stays() -> Message:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with pytest.raises(ValueError, match="the block's"):
        async with watch.cancelled_when_the_client_leaves(client_stays, nursery):
            await trio.sleep(lasts_s)
            raise ValueError("the block's own error")


async def test_the_alarm_comes_back_after_its_nursery_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests after the owner's end (a new one given) are still watched."""
    watch = ClientWatch()
    async with trio.open_nursery() as first_owner:
        async with watch.cancelled_when_the_client_leaves(never_called, first_owner):
            pass
        first_owner.cancel_scope.cancel()
    leaves = trio.Event()
    leaves.set()

    async def receive() -> Message:
        await leaves.wait()
        return {"type": "http.disconnect"}

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as second_owner:
            async with watch.cancelled_when_the_client_leaves(receive, second_owner):
                await trio.sleep_forever()
            second_owner.cancel_scope.cancel()


async def _leave_after(leaves: trio.Event, delay_s: float) -> None:
    await trio.sleep(delay_s)
    leaves.set()


async def test_a_quick_block_costs_no_schedule_point(nursery: trio.Nursery) -> None:
    """On the hot path of every request: a round of trio's loop costs more than the watch."""
    watch = ClientWatch()
    others_ran = []

    async def another() -> None:
        others_ran.append(True)

    nursery.start_soon(another)  # runs at this task's next yield
    async with watch.cancelled_when_the_client_leaves(never_called, nursery):
        pass
    assert others_ran == []
