"""A bounded FIFO queue in front of the engine's slots.

Up to ``capacity`` requests run at once; up to ``max_waiting`` more wait, in arrival order
(trio's Semaphore wakes waiters first-in, first-out); past that a request is refused at once
with 429 and a Retry-After, rather than waiting without bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from router.errors import QueueFull


class Admission:
    def __init__(self, capacity: int, max_waiting: int) -> None:
        self._slots = trio.Semaphore(capacity)
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.waiting = 0
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once nothing runs and nothing waits. Cancellation: returns early."""
        while not (self.running == 0 and self.waiting == 0):
            await self._idle.wait()

    @property
    def running(self) -> int:
        return self.capacity - self._slots.value

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of the block.

        Raises QueueFull at once when all slots are busy and the queue is full.
        Cancellation: a request cancelled while waiting leaves the queue and takes no slot.
        """
        if self._idle.is_set():
            self._idle = trio.Event()
        if self._slots.value > 0:  # a free slot means nobody waits: take it
            self._slots.acquire_nowait()
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            if self.waiting >= self.max_waiting:
                raise QueueFull(
                    f"the model is busy: {self.capacity} running and {self.waiting} waiting, "
                    f"which is all its queue holds (--max-queue {self.max_waiting}); retry later"
                )
            self.waiting += 1
            try:
                await self._slots.acquire()
            except BaseException:
                self.waiting -= 1
                self._note_if_idle()
                raise
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
            self._note_if_idle()

    def _note_if_idle(self) -> None:
        if self.running == 0 and self.waiting == 0:
            self._idle.set()
