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
alarm) sleeps until the first such moment, and starts the watching task then (in its own
nursery; the request waits for its watch to end before it ends). A quick request costs a
dictionary entry and a cancel scope, and no schedule point (a nursery's end is one); a client
that leaves is noticed at most ``WATCH_AFTER_S`` later than with a watch from the start.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from router.edge.raw_asgi import Receive

WATCH_AFTER_S = 0.02
WATCH_END_S = 5.0  # a watch ends at once when cancelled; this bounds a request's wait for it

log = logging.getLogger("router.edge.client_watch")


@dataclass(eq=False)
class _Watched:
    """One request: when its client is to be watched, and the watch once it began."""

    deadline: float
    request: trio.CancelScope  # the request's block: the watch cancels it
    receive: Receive
    watch: trio.CancelScope | None = None  # the watch's own, once the alarm started it
    watch_ended: trio.Event | None = None


class ClientWatch:
    """The watches of one app's requests; see the module docstring."""

    def __init__(self, after_s: float = WATCH_AFTER_S) -> None:
        self._after_s = after_s
        # Requests not watched yet, in the order of their deadlines (each is the time it was
        # added plus the same ``after_s``).
        self._unwatched: dict[trio.CancelScope, _Watched] = {}
        self._alarm = trio.CancelScope()  # the alarm's sleep, until the first deadline
        self._has_alarm = False

    @asynccontextmanager
    async def cancelled_when_the_client_leaves(
        self, receive: Receive, owner: trio.Nursery
    ) -> AsyncIterator[None]:
        """Run the block; if it lasts ``after_s`` and its client leaves (``receive`` gives
        ``http.disconnect``), cancel it. Enter once the request's body has been read.

        ``owner`` (the app's nursery) runs the alarm, from the first request on; the watches
        run in the alarm's nursery, and a block that ends waits for its watch to end (at
        once: the watch only waits for ``receive``). A quick block costs no schedule point.
        Cancellation: as the block's; the watch ends with it.
        """
        if not self._has_alarm:
            self._has_alarm = True
            # In a context of its own: a task inherits its starter's context variables, and
            # the alarm and its watches would carry the first request's (its access record).
            contextvars.Context().run(owner.start_soon, self._run_alarm)
        with trio.CancelScope() as request:
            watched = _Watched(trio.current_time() + self._after_s, request, receive)
            self._unwatched[request] = watched
            self._alarm.deadline = min(self._alarm.deadline, watched.deadline)
            try:
                yield
            finally:
                self._unwatched.pop(request, None)
                if watched.watch is not None and watched.watch_ended is not None:
                    watched.watch.cancel()
                    with trio.CancelScope(shield=True), trio.move_on_after(WATCH_END_S):
                        await watched.watch_ended.wait()
                    if not watched.watch_ended.is_set():  # a bug: the request must go on
                        log.error("a client's watch did not end within %g s", WATCH_END_S)

    async def _run_alarm(self) -> None:
        """Start the watch of each request that has lasted ``after_s``, when it has.
        Cancellation: ends the watches; the next request starts the alarm again."""
        try:
            async with trio.open_nursery() as watches:
                while True:
                    with self._alarm:
                        await trio.sleep_forever()
                    self._alarm = trio.CancelScope(deadline=math.inf)
                    now = trio.current_time()
                    for watched in list(self._unwatched.values()):
                        if watched.deadline > now:
                            self._alarm.deadline = watched.deadline
                            break
                        del self._unwatched[watched.request]
                        watched.watch, watched.watch_ended = trio.CancelScope(), trio.Event()
                        watches.start_soon(_cancel_when_the_client_leaves, watched)
        finally:
            self._has_alarm = False
            self._alarm = trio.CancelScope(deadline=min(
                (watched.deadline for watched in self._unwatched.values()), default=math.inf
            ))  # fmt: skip


async def _cancel_when_the_client_leaves(watched: _Watched) -> None:
    """Cancel the request on ``http.disconnect``, which the server also sends once the answer
    is complete (the request is over by then, or about to be)."""
    assert watched.watch is not None and watched.watch_ended is not None
    try:
        with watched.watch:
            while (await watched.receive())["type"] != "http.disconnect":
                pass
            watched.request.cancel()
    except Exception:  # the request goes on unwatched; the alarm and the app must not end
        log.exception("watching a client for its leaving failed")
    finally:
        watched.watch_ended.set()
