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
(its task is cancelled: a pipe wakes the thread if it waits, a flag stops it at its next
write if it never does). Only ``MAX_PUMPS`` streams at once are pumped (a thread each), and
only while a pipe can be made; the others are copied on trio's loop, as every answer used to
be. Only an answer that is not an error passes the pump: the ASGI ``send`` wrappers (the
access log's note of an error's body) never see what the pump writes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import select
import time
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
POLL_MAX_MS: Final = 2**31 - 1  # the longest timeout poll(2) takes

log = logging.getLogger("router.edge.stream_pump")

_running = 0  # pumps under way, counted on the Trio thread


class _Woken(Exception):
    """The task that waits for the pump was cancelled: the pump stops where it is."""


class _Wake:
    """A pipe the task rings when it is cancelled, watched by the pump's every wait, and a
    flag the pump looks at between its writes (a stream that never waits still stops)."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.is_rung = False
        self._pollers: dict[tuple[int, int], select.poll] = {}  # one a socket and direction

    def ring(self) -> None:
        self.is_rung = True
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
        deadline = time.monotonic() + timeout_s
        while True:
            # poll takes at most 2**31 - 1 ms (24 days): a longer timeout is waited in parts.
            left_ms = (deadline - time.monotonic()) * 1000
            part_ms = POLL_MAX_MS if left_ms >= POLL_MAX_MS else max(0, math.ceil(left_ms))
            ready = poller.poll(part_ms)
            if any(ready_fd == self._read_fd for ready_fd, _ in ready):
                raise _Woken
            if ready or part_ms < POLL_MAX_MS:
                return bool(ready)

    def wait_readable(self, fd: int, timeout_s: float) -> bool:
        return self.wait(fd, select.POLLIN, timeout_s)

    def wait_writable(self, fd: int, timeout_s: float) -> bool:
        return self.wait(fd, select.POLLOUT, timeout_s)

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)


async def pump(response: WireResponse, writer: ThreadWriter, counter: UsageCounter | None) -> bool:
    """Copy the rest of ``response``'s body to ``writer``'s client, each piece fed to
    ``counter`` on its way, in a worker thread; True when the body has ended. False, at once
    and with nothing read, when no pump can start (``MAX_PUMPS`` are running, or no pipe can be
    made: out of file descriptors): copy it on trio's loop then.

    Raises what ``response.aiter_raw`` raises (WireError, ChildTimeout) and ClientDisconnected
    once the client has gone (its connection is told so). ``response`` must be
    ``can_be_read_from_a_thread``.
    Cancellation: the thread stops at its next wait or write (at once, if it waits) and the
    body is left unfinished, so the connection to the child is closed, not reused.
    """
    global _running
    if _running >= MAX_PUMPS:
        return False
    try:
        wake = _Wake()
    except OSError as exc:
        log.warning("a stream is copied on trio's loop: no pipe for its pump (%s)", exc)
        return False
    _running += 1
    try:
        await trio.lowlevel.checkpoint_if_cancelled()  # not in the nursery: no group around it
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
    return True


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
        if wake.is_rung:
            raise _Woken
        is_written = writer.write(pieces, wake.wait_writable)
        if counter is not None:  # what the child made counts, whoever read it
            for piece in pieces:
                counter.feed(piece)
        if not is_written:
            return
