"""A request whose client leaves is cancelled, but a client is watched only once its request
has lasted a moment.

Quart cancels a request whose client has left, with a task per request that waits for ASGI's
``http.disconnect``; the raw fast paths (the router's and the child's) must do the same, or a
client that gives up on a long answer that is not streamed (no write to it fails before the
end) keeps a slot generating for nobody. Such a task costs ~60 µs of CPU a request on the
team's 2-core VM (its start, its cancellation, its end: ``bench/router_profile.md``), a tenth
of a quick answer's whole cost, and a quick answer gains nothing from it: its work is done
before a watch would notice anything.

So a request is watched only once it has lasted ``WATCH_AFTER_S``: one task per app (the
alarm) sleeps until the first such moment, and starts the watching task then, in the
request's own nursery. A quick request costs a dictionary entry and a nursery; a client that
leaves is noticed at most ``WATCH_AFTER_S`` later than with a watch from the start.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from router.edge.raw_asgi import Receive

WATCH_AFTER_S = 0.02


@dataclass(frozen=True)
class _Unwatched:
    deadline: float  # when the request's client is to be watched
    nursery: trio.Nursery  # the request's: the watch runs in it and cancels it
    receive: Receive


class ClientWatch:
    """The watches of one app's requests; see the module docstring."""

    def __init__(self, after_s: float = WATCH_AFTER_S) -> None:
        self._after_s = after_s
        # Requests not watched yet, by their nursery; in the order of their deadlines (each is
        # the entry's time plus the same ``after_s``).
        self._unwatched: dict[trio.Nursery, _Unwatched] = {}
        self._alarm = trio.CancelScope()  # the alarm's sleep, until the first deadline
        self._has_alarm = False

    @asynccontextmanager
    async def cancelled_when_the_client_leaves(
        self, receive: Receive, owner: trio.Nursery
    ) -> AsyncIterator[None]:
        """Run the block; if it lasts ``after_s`` and its client leaves (``receive`` gives
        ``http.disconnect``), cancel it. Enter once the request's body has been read.

        ``owner`` (the app's nursery) runs the alarm, from the first request on. An error
        the block raises comes out as itself, not in an exception group.
        """
        if not self._has_alarm:
            self._has_alarm = True
            owner.start_soon(self._run_alarm)
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            deadline = trio.current_time() + self._after_s
            self._unwatched[nursery] = _Unwatched(deadline, nursery, receive)
            self._alarm.deadline = min(self._alarm.deadline, deadline)
            try:
                yield
            except Exception as error:  # raised below as itself, not in the nursery's group
                failure = error
            finally:
                self._unwatched.pop(nursery, None)  # (the alarm took it if it began)
                nursery.cancel_scope.cancel()  # the watch, if it began
        if failure is not None:
            raise failure

    async def _run_alarm(self) -> None:
        """Start the watch of each request that has lasted ``after_s``, when it has."""
        while True:
            with self._alarm:
                await trio.sleep_forever()
            self._alarm = trio.CancelScope(deadline=math.inf)
            now = trio.current_time()
            for request in list(self._unwatched.values()):
                if request.deadline > now:
                    self._alarm.deadline = request.deadline
                    break
                del self._unwatched[request.nursery]
                scope = request.nursery.cancel_scope
                request.nursery.start_soon(_cancel_when_the_client_leaves, request.receive, scope)


async def _cancel_when_the_client_leaves(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` on ``http.disconnect``, which the server also sends once the answer is
    complete (the request is over by then, or about to be)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
