"""Copy a child's streamed answer to its client in a worker thread, not on trio's loop.

Why: a streamed event reaches the router every step of the model (15 ms for a small one), and
each then costs the router a round of trio's loop (the task parked on the child's socket, woken,
resumed), a deadline's cancel scope, the generators of the body and the ASGI ``send`` wrappers,
all on caches the model's matrix multiplications have just emptied: ~400 µs of CPU an event on
the team's 2-core machine, taken from the decode threads (``bench/router_profile.md``, sixth
round). A thread that blocks in ``poll`` on the child's socket, undoes the chunked framing,
counts the usage and writes to the client does the same for a fraction of it; the request's
task waits for the thread, so the stream keeps one owner.

What stays as it was: the answer's head, its error event when the child breaks off, the
deadlines (the child's ``timeout_s``, the client's ``send_timeout_s``) and a client that leaves
(its task is cancelled: a pipe wakes the thread at once). Only ``MAX_PUMPS`` streams at once
are pumped (a thread each); the others are copied on trio's loop, as every answer used to be.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
from typing import Final

import outcome
import trio

from router.edge.lean_http import ThreadWriter
from router.edge.usage import UsageCounter
from router.processes.wire import WireResponse

# Streams copied by a thread at once. A few streams are where the router's CPU an event competes
# with the decode threads of a small machine; past that, the CPUs are busy anyway, and threads
# would only contend for the GIL with the Trio thread.
MAX_PUMPS: Final = 4

_running = 0  # pumps under way, counted on the Trio thread


class _Woken(Exception):
    """The task that waits for the pump was cancelled: the pump stops where it is."""


class _Wake:
    """A pipe the task rings when it is cancelled, watched by the pump's every wait."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._pollers: dict[tuple[int, int], select.poll] = {}  # one a socket and direction

    def ring(self) -> None:
        with contextlib.suppress(OSError):  # full: rung already
            os.write(self._write_fd, b"!")

    def wait(self, fd: int, events: int, timeout_s: float) -> bool:
        """Block until ``fd`` is ready for ``events``; False after ``timeout_s``.
        Raises _Woken when the pipe rings."""
        poller = self._pollers.get((fd, events))
        if poller is None:
            poller = self._pollers[fd, events] = select.poll()
            poller.register(fd, events)
            poller.register(self._read_fd, select.POLLIN)
        ready = poller.poll(None if math.isinf(timeout_s) else max(0, math.ceil(timeout_s * 1000)))
        if any(ready_fd == self._read_fd for ready_fd, _ in ready):
            raise _Woken
        return bool(ready)

    def wait_readable(self, fd: int, timeout_s: float) -> bool:
        return self.wait(fd, select.POLLIN, timeout_s)

    def wait_writable(self, fd: int, timeout_s: float) -> bool:
        return self.wait(fd, select.POLLOUT, timeout_s)

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)


def has_room() -> bool:
    """Whether one more stream may be pumped now."""
    return _running < MAX_PUMPS


async def pump(response: WireResponse, writer: ThreadWriter, counter: UsageCounter | None) -> None:
    """Copy the rest of ``response``'s body to ``writer``'s client, each piece fed to
    ``counter`` on its way, in a worker thread; return when the body has ended.

    Raises what ``response.aiter_raw`` raises (WireError, ChildTimeout) and ClientDisconnected
    once the client has gone (its connection is told so). Call only where ``has_room()`` and
    ``response.can_be_read_from_a_thread``.
    Cancellation: the thread stops at its next wait (at once, if it waits) and the body is left
    unfinished, so the connection to the child is closed, not reused.
    """
    global _running
    _running += 1
    wake = _Wake()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ring_when_cancelled, wake)
            copied: outcome.Outcome[None] = await trio.to_thread.run_sync(
                functools.partial(outcome.capture, _copy, response, writer, counter, wake),
                limiter=trio.CapacityLimiter(1),  # its own: never the default limiter's tokens
            )
            nursery.cancel_scope.cancel()
    finally:
        _running -= 1
        wake.close()
    try:
        copied.unwrap()
    except _Woken:
        await trio.lowlevel.checkpoint()  # the cancellation that rang
        raise AssertionError("woken without a cancellation") from None
    writer.settle()


async def _ring_when_cancelled(wake: _Wake) -> None:
    """Ring ``wake`` once the pump's task is cancelled. The cancellation is not raised here
    (the nursery would wrap it in a group): the task meets it at its next checkpoint, once the
    thread has stopped."""
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        wake.ring()


def _copy(
    response: WireResponse, writer: ThreadWriter, counter: UsageCounter | None, wake: _Wake
) -> None:
    """The thread's work: read, write, count, until the body ends or the client has gone
    (the client has its event before the router parses it)."""
    while pieces := response.read_pieces_blocking(wake.wait_readable):
        is_written = writer.write(pieces, wake.wait_writable)
        if counter is not None:  # what the child made counts, whoever read it
            for piece in pieces:
                counter.feed(piece)
        if not is_written:
            return
