"""What every child process shares, whatever its kind: its record, the reader of its output
lines, the stop sequence and the liveness check.

The kinds differ only in how a child is built and how it says it is ready: our own children
(``own_children.py``: the lifeline, spares) and external commands (``command_children.py``:
a health path). The supervisor (``supervisor.py``) runs both with the pieces here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import trio

from router.errors import WireError
from router.processes import lifeline, wire
from router.spec import ModelSpec

log = logging.getLogger("router.children")

KILL_AFTER_TERM_S = 2.0
MAX_LINE_BYTES = 64 * 1024  # a longer "line" from a child is cut into pieces of this size

OnReady = Callable[["Child", str, trio.Process], None]
# A server's line that says where it listens ("Running on unix:...", our child's "serving
# MODEL (...) at unix:..."): start-up noise, for the router logs the load ("loaded in 1.2 s").
_ANNOUNCEMENT = re.compile(r"(Running on|^serving .* at) (unix:|https?://)")
MAX_NOTED_LINES = 1000  # distinct start-up lines remembered, to log a repeated one only once


@dataclass
class Child:
    """One model's process, from the decision to start it to its exit."""

    spec: ModelSpec
    argv: list[str]
    env: dict[str, str]
    # A 'command' child's address (``http://127.0.0.1:PORT`` or ``unix:PATH``), and its TCP
    # port if it has one; None for our own children, which announce theirs on the lifeline.
    command_address: str | None = None
    port: int | None = None
    launch_error: str = ""  # why its command could not even be built; it is not spawned
    stop_requested: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    last_error: str = ""
    last_line: str = ""
    fatal_error: str = ""  # why it failed for sure (hung, not its port...): wins over its lines
    failure_kind: str = ""  # the lifeline's kind of failed load (not_found, not_gguf...)
    was_ready: bool = False
    ready_address: str = ""  # where it serves, once ready
    became_ready: trio.Event = field(default_factory=trio.Event)
    # Its model freed, its server closed, the process waits as a spare again (a stop that
    # asked for it): for the model, this is its exit.
    went_back_to_spare: trio.Event = field(default_factory=trio.Event)
    # Where each line it prints goes besides the log: (line, stream), the supervisor's.
    report_line: Callable[[str, str], None] | None = None
    _startup_lines: set[str] = field(default_factory=set)

    @property
    def is_command(self) -> bool:
        """An external server: no lifeline, no spare; SIGTERM is its stop."""
        return self.spec.command is not None

    def note_line(self, line: str, stream: str = "stderr") -> None:
        """Log one line it printed as ``[model] line``; remember the last error-like one.

        Its start-up noise is logged at DEBUG only: where its server listens (the router
        logs the load), and a line it already printed while loading (llama.cpp repeats its
        warnings for each context it creates). Every line still reaches ``report_line``.
        """
        if not line:
            return
        if self.report_line is not None:
            self.report_line(line, stream)
        is_noise = _ANNOUNCEMENT.search(line) is not None
        if not self.was_ready and not is_noise:
            is_noise = line in self._startup_lines
            if len(self._startup_lines) < MAX_NOTED_LINES:
                self._startup_lines.add(line)
        log.log(logging.DEBUG if is_noise else logging.INFO, "[%s] %s", self.spec.id, line)
        self.last_line = line
        if "error" in line.lower():
            self.last_error = line.removeprefix("error: ")

    def exit_reason(self, exit_code: int | None) -> str:
        """Why it ended, in plain words: what it said for sure (hung, failed load), else the
        signal that killed it, else its last error line, else its exit code and last line."""
        if self.fatal_error:
            return self.fatal_error
        if exit_code is not None and exit_code < 0:
            return f"killed by signal {-exit_code} ({signal_name(-exit_code)})"
        if self.last_error:
            return self.last_error
        if exit_code is None:
            return self.last_line
        said = f": {self.last_line}" if self.last_line else ""
        return f"exited with code {exit_code}{said}"


async def each_line(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    """The lines of ``stream`` (decoded, line ends removed), the last one even without an end.

    The one line reader for every child output: stdout, stderr, the lifeline.
    """
    buffer = b""
    async for data in stream:
        buffer += data
        while b"\n" in buffer or len(buffer) > MAX_LINE_BYTES:
            cut = buffer.find(b"\n")
            line, buffer = (
                (buffer[:cut], buffer[cut + 1 :]) if 0 <= cut <= MAX_LINE_BYTES
                else (buffer[:MAX_LINE_BYTES], buffer[MAX_LINE_BYTES:])
            )  # fmt: skip
            yield line.decode(errors="replace").rstrip("\r")
    if buffer:
        yield buffer.decode(errors="replace")


async def log_lines(
    child: Child, stream: trio.abc.ReceiveStream, done: trio.Event, name: str = "stderr"
) -> None:
    """Log every line of ``stream`` (``name``: stderr or stdout) as the child's; set ``done``
    at its end."""
    try:
        async for line in each_line(stream):
            child.note_line(line.rstrip(), name)
    finally:
        done.set()


async def terminate(
    child: Child, process: trio.Process, stop_timeout_s: float, *, back_to_spare: bool = False
) -> None:
    """The one stop sequence: the graceful stop, then SIGTERM, then SIGKILL to the group.

    The graceful stop is the lifeline's ``stop`` command for our own children, SIGTERM for a
    command (it knows no lifeline). With ``back_to_spare`` (a spare's process), the graceful
    stop asks the process to wait as a spare afterwards; it is over when it says so.
    Cancellation: trio runs this shielded when the router shuts down; its own deadlines
    bound it to ``stop_timeout_s`` plus a second plus KILL_AFTER_TERM_S.
    """
    child.stop_requested.set()
    if child.is_command:
        signal_group(process, signal.SIGTERM)
    elif process.stdin is not None:
        command = lifeline.stop_command(stop_timeout_s, back_to_spare=back_to_spare)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await process.stdin.send_all(command)
    with trio.move_on_after(stop_timeout_s + 1):
        await wait_ended(child, process)
        return
    signal_group(process, signal.SIGTERM)
    with trio.move_on_after(KILL_AFTER_TERM_S):
        await process.wait()
        return
    signal_group(process, signal.SIGKILL)
    await process.wait()


async def wait_ended(child: Child, process: trio.Process) -> None:
    """Wait until ``child`` is over: its process exited, or went back to being a spare.

    Cancellation: stops waiting (Cancelled propagates).
    """
    async with trio.open_nursery() as nursery:

        async def wait_then_cancel(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait_then_cancel, process.wait)
        nursery.start_soon(wait_then_cancel, child.went_back_to_spare.wait)


async def watch_liveness(
    child: Child, process: trio.Process, *, interval_s: float, misses_allowed: int
) -> None:
    """Once ready, ping the child on a connection of its own; kill it if it stops answering.

    Any answer counts (a stopping child's 503 too): only silence for ``misses_allowed`` pings
    in a row, each given ``interval_s``, means it is hung. Its requests then end with an
    error instead of waiting for ever, and the next one starts it again.
    Cancellation: returns.
    """
    await child.became_ready.wait()
    path = child.spec.health if child.is_command else "/health"
    misses, silent_since = 0, time.monotonic()
    while process.returncode is None:
        started = time.monotonic()
        try:
            with trio.fail_after(interval_s):
                await wire.probe(child.ready_address, path, timeout_s=interval_s)
            misses, silent_since = 0, time.monotonic()
        except (WireError, trio.TooSlowError):
            misses += 1
        if misses >= misses_allowed:
            silent_s = time.monotonic() - silent_since
            child.fatal_error = (
                f"not responding for {silent_s:.0f}s ({misses} health checks missed "
                "in a row); killed. The next request starts it again"
            )
            log.warning("[%s] %s", child.spec.id, child.fatal_error)
            signal_group(process, signal.SIGKILL)
            return
        await trio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def signal_group(process: trio.Process, signum: int) -> None:
    """Send ``signum`` to the process group the child leads, if it still runs."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; the number itself for a signal Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe(exc: BaseException) -> str:
    """One line for an exception, the first leaf of a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
