"""A bounded FIFO queue in front of the engine's slots.

Up to ``capacity`` slots are held at once; a request takes one slot per generation it runs
(``n`` choices take ``n``), all at once or none, so two requests that each want several slots
can never hold part of them and wait for each other. Up to ``max_waiting`` requests wait, in
arrival order: the first in line is served first, even when a later one wants fewer slots
that are free, so a request for many slots is never starved by a stream of small ones. Past
``max_waiting``, a request is refused at once with 429 and a Retry-After, rather than waiting
without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import trio

from router.errors import QueueFull


@dataclass(eq=False)
class _Waiter:
    count: int
    granted: trio.Event = field(default_factory=trio.Event)


class Admission:
    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.running = 0  # slots held
        self._line: deque[_Waiter] = deque()
        self._idle = trio.Event()
        self._idle.set()

    @property
    def waiting(self) -> int:
        """Requests waiting for their slots."""
        return len(self._line)

    async def wait_idle(self) -> None:
        """Return once nothing runs and nothing waits. Cancellation: returns early."""
        while not (self.running == 0 and self.waiting == 0):
            await self._idle.wait()

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Hold one slot for the duration of the block; see :meth:`slots`."""
        return self.slots(1)

    @asynccontextmanager
    async def slots(self, count: int) -> AsyncIterator[None]:
        """Hold ``count`` slots for the duration of the block, taken together.

        Raises ValueError when ``count`` is more than ``capacity`` (the caller checks it
        first, and answers 400), QueueFull at once when the slots are not free and the queue
        is full.
        Cancellation: a request cancelled while waiting leaves the queue and takes no slot.
        """
        if not 1 <= count <= self.capacity:
            raise ValueError(f"{count} slots asked of {self.capacity}")
        # A cancellation point before anything changes; slots that are free are then taken
        # without a schedule point (a round of Trio's loop would only delay the request).
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._idle.is_set():
            self._idle = trio.Event()
        if not self._line and self.capacity - self.running >= count:  # nobody is ahead
            self.running += count
        else:
            if self.waiting >= self.max_waiting:
                self._note_if_idle()
                raise QueueFull(
                    f"the model is busy: {self.running} of its {self.capacity} slots in use "
                    f"and {self.waiting} requests waiting, which is all its queue holds "
                    f"(--max-queue {self.max_waiting}); retry later"
                )
            waiter = _Waiter(count)
            self._line.append(waiter)
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # granted just as it was cancelled
                    self._release(count)
                else:
                    self._line.remove(waiter)
                    self._grant()  # it may have been what held the others back
                    self._note_if_idle()
                raise
        try:
            yield
        finally:
            self._release(count)

    def _release(self, count: int) -> None:
        self.running -= count
        self._grant()
        self._note_if_idle()

    def _grant(self) -> None:
        """Give waiters their slots, first in line first, while the first one's are free."""
        while self._line and self.capacity - self.running >= self._line[0].count:
            waiter = self._line.popleft()
            self.running += waiter.count
            waiter.granted.set()

    def _note_if_idle(self) -> None:
        if self.running == 0 and self.waiting == 0:
            self._idle.set()
