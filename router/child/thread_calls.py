"""Work run on the decode loop's thread, awaited from Trio: ``ThreadCall``.

All of llama.cpp's computing in a child runs on that one thread (or, for a short first step,
on the Trio thread with one core: ``inline_steps.py``). llama.cpp's OpenMP gives each thread
that computes with more than one core a team of workers of its own, and once a process has
more workers than CPUs, libgomp stops spinning at its barriers and sleeps at each: an
embedding request computed on one of Trio's worker threads made every generation after it
ten times slower, until that worker retired 10 s later (100 tokens at ``-t 2``: 12 → 144 ms).
So embeddings and reranking run here, between two steps of the loop, as llama-server runs
them in its one loop.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class _State(enum.Enum):
    WAITING = "waiting"
    STARTED = "started"
    DROPPED = "dropped"  # its caller was cancelled before it started


class ThreadCall(Generic[T]):
    """``work``, to be run once by the loop's thread (``run``) and awaited by the Trio task
    that made this (``result``), at once: the thread may answer as soon as the call is in its
    inbox, and the answer goes to that task, which must be waiting for it by then (as in
    ``DecodeLoop.run_between_steps``: no checkpoint between, and no KeyboardInterrupt)."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._work = work
        self._task = trio.lowlevel.current_task()
        self._trio_token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()  # between ``run`` or ``refuse`` and a cancellation
        self._state = _State.WAITING

    async def result(self) -> T:
        """What ``work`` returned, or its exception raised here.

        Cancellation: gives the work up if the thread has not begun it; else waits for its
        end (llama.cpp cannot stop midway) and returns, as ``trio.to_thread.run_sync`` does;
        the cancellation comes at the caller's next checkpoint.
        """
        if trio.lowlevel.current_task() is not self._task:
            raise RuntimeError("a ThreadCall is awaited by the task that made it")

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            with self._lock:
                if self._state is _State.STARTED:
                    return trio.lowlevel.Abort.FAILED
                self._state = _State.DROPPED
                return trio.lowlevel.Abort.SUCCEEDED

        answer: T = await trio.lowlevel.wait_task_rescheduled(abort)  # the outcome, unwrapped
        return answer

    def run(self) -> None:
        """Run the work (on the loop's thread) unless its caller gave it up."""
        if self._begin():
            self._answer(outcome.capture(self._work))

    def refuse(self, error: BaseException) -> None:
        """Answer ``error`` without running the work (the loop has stopped)."""
        if self._begin():
            self._answer(outcome.Error(error))

    def _begin(self) -> bool:
        """Whether the work is to be answered now: once, and not once its caller gave it up."""
        with self._lock:
            if self._state is not _State.WAITING:
                return False
            self._state = _State.STARTED
            return True

    def _answer(self, answer: outcome.Outcome[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the caller's run is gone
            self._trio_token.run_sync_soon(trio.lowlevel.reschedule, self._task, answer)
