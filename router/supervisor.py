"""Run and stop children: one nursery owns every child process, and their exits become events.

Each child is ``trio.run_process`` in a task of the supervisor's nursery, in a process group of
its own, speaking the lifeline protocol (``lifeline.py``) over stdin/stdout and serving on a
Unix socket in the router's private runtime directory. The supervisor reports what happens
(ready, exited) to its owner and decides nothing: the pool decides what to start and stop.

Stopping a child, by request or because the router shuts down: the graceful ``stop`` command,
then SIGTERM to its process group after ``stop_timeout_s``, then SIGKILL two seconds later.
If the router itself dies, the kernel closes the children's stdin and they exit at once.

Once ready, every child is pinged (``GET /health`` on a connection of its own) every
``health_interval_s``; one that misses ``health_misses`` pings in a row (stopped with SIGSTOP,
deadlocked, swapping) is declared hung and killed, which the pool reports as a failure.

Nothing a model's configuration holds can stop the router: a child that cannot even be spawned
(a bad environment, a missing program) is reported as a child that exited at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from router import lifeline, wire
from router.catalog import ModelSpec
from router.confd import child_argv, effective_child_options

log = logging.getLogger("router.children")

KILL_AFTER_TERM_S = 2.0
HEALTH_TIMEOUT_S = 2.0  # for one health check of a 'command' child that is starting
_SPARE_ARGV = [sys.executable, "-m", "router", "child", "--spare"]
# The router's own variables (API keys above all) never reach a child: third-party commands
# included. A model's [env] may still set one on purpose.
_PRIVATE_ENV_PREFIX = "LLAMA_ROUTER_"


@dataclass(frozen=True)
class ChildExit:
    """How a child ended."""

    exit_code: int | None
    last_error: str  # the last line it printed that looks like an error ("" if none)
    was_stopped: bool  # we asked it to stop
    was_ready: bool  # it had announced readiness


class ChildEvents(Protocol):
    def child_ready(self, model_id: str, address: str, pid: int) -> None: ...

    def child_exited(self, model_id: str, ended: ChildExit) -> None: ...


@dataclass(frozen=True)
class SupervisorSettings:
    runtime_dir: Path
    child_defaults: Mapping[str, Any] = field(default_factory=dict)  # router.toml [defaults]
    child_options: Mapping[str, Any] = field(default_factory=dict)  # command-line child flags
    stop_timeout_s: float = 10.0
    load_timeout_s: float = 600.0
    health_poll_s: float = 0.1  # how often a 'command' child's health path is tried
    health_interval_s: float = 5.0  # how often a ready child is pinged
    health_misses: int = 3  # pings missed in a row before it is declared hung and killed
    use_spares: bool = True  # keep a pre-started child waiting for the next load


@dataclass
class _Child:
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
    fatal_error: str = ""  # why the router killed it (hung, not its port): wins over its lines
    was_ready: bool = False
    ready_address: str = ""  # where it serves, once ready
    became_ready: trio.Event = field(default_factory=trio.Event)

    @property
    def is_command(self) -> bool:
        """An external server: no lifeline, no spare; SIGTERM is its stop."""
        return self.spec.command is not None


@dataclass
class _Holder:
    """One process the supervisor runs: a model's child, or a spare waiting for one."""

    child: _Child | None
    assigned: trio.Event = field(default_factory=trio.Event)
    process: trio.Process | None = None  # set once spawned (a spare is usable from then)


class Supervisor:
    def __init__(
        self,
        nursery: trio.Nursery,
        settings: SupervisorSettings,
        events: ChildEvents,
        adjust_launch: Callable[[ModelSpec, list[str], dict[str, str]], None] | None = None,
    ) -> None:
        self._nursery = nursery
        self._settings = settings
        self._events = events
        self._adjust_launch = adjust_launch  # plugins' child_launch: may edit argv and env
        self._children: dict[str, _Child] = {}
        self._spare: _Holder | None = None
        self._is_stopping = False

    def socket_path(self, model_id: str) -> Path:
        """Where ``model_id``'s child listens: unique per id (a hash), readable (a prefix)."""
        return self._settings.runtime_dir / socket_name(model_id)

    def command_for(
        self, spec: ModelSpec, extra_args: Sequence[str] = (), port: int | None = None
    ) -> list[str]:
        """The child's argv: our own child with its options, or the spec's own command."""
        if spec.command is not None:
            values = {
                "{port}": str(port),
                "{host}": "127.0.0.1",
                "{socket}": str(self.socket_path(spec.id)),
                "{model}": str(spec.path) if spec.path else "",
            }
            # Under the guard, which stops it if the router dies (it knows no lifeline).
            return [
                sys.executable, "-m", "router.guard",
                *(_fill(part, values) for part in spec.command),
            ]  # fmt: skip
        socket_path = self.socket_path(spec.id)
        options = effective_child_options(
            spec, self._settings.child_defaults, self._settings.child_options
        )
        return [
            sys.executable, "-m", "router", "child",
            "--model", str(spec.path),
            "--alias", spec.id,
            "--unix-socket", str(socket_path),
            *child_argv(options),
            *extra_args,
        ]  # fmt: skip

    def start(self, spec: ModelSpec, *, extra_args: Sequence[str] = ()) -> list[str]:
        """Start ``spec``'s child in the background; return its argv. One child per model."""
        if spec.id in self._children:
            raise RuntimeError(f"model {spec.id!r} already has a child")
        child = _Child(spec=spec, argv=[], env={})
        try:
            if spec.command is not None:
                uses_socket = any("{socket}" in part for part in spec.command)
                if uses_socket:
                    child.command_address = f"unix:{self.socket_path(spec.id)}"
                else:
                    child.port = _free_port()
                    child.command_address = f"http://127.0.0.1:{child.port}"
            child.argv = self.command_for(spec, extra_args, child.port)
            child.env = {**self._base_env(), **spec.env}
            if self._adjust_launch is not None:
                self._adjust_launch(spec, child.argv, child.env)
        except Exception as exc:  # whatever it is, it fails this model, never the router
            log.exception("[%s] cannot build its command", spec.id)
            child.launch_error = f"cannot start it: {_describe(exc)}"
        self._children[spec.id] = child
        if child.launch_error or not self._take_spare(child):
            self._nursery.start_soon(self._run, _Holder(child), name=f"child {spec.id}")
        self.keep_a_spare()  # for the next load: a back-to-back swap finds it ready
        return child.argv

    def stop(self, model_id: str) -> None:
        """Ask ``model_id``'s child to stop (gracefully first); no-op if it has none."""
        child = self._children.get(model_id)
        if child is not None:
            child.stop_requested.set()

    async def stop_all(self) -> None:
        """Stop every child the graceful way and wait until all have exited.

        Each child is bounded by ``stop_timeout_s`` plus the SIGTERM and SIGKILL steps.
        Cancellation: returns early; cancelling the supervisor's nursery then stops the rest
        (trio's ``run_process`` runs the same stop sequence, shielded).
        """
        self._is_stopping = True
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.assigned.set()  # with no child: it ends
        children = list(self._children.values())
        for child in children:
            child.stop_requested.set()
        for child in children:
            await child.exited.wait()

    async def _run(self, holder: _Holder) -> None:
        """Run one process from spawn to exit: a model's child, or a spare until it gets one.

        A spare is ``llama-router child --spare``: an interpreter with llama.cpp and the
        server already imported, waiting for an ``assign`` line with its model's arguments.
        Handing a load to a spare saves the half second a new Python process spends importing.
        """
        secret = lifeline.new_secret()
        child = holder.child
        if child is not None and child.is_command:
            argv, env = child.argv, dict(child.env)  # a 'command': no lifeline, no spare
        else:
            argv = child.argv if child is not None else _SPARE_ARGV
            env = dict(child.env) if child is not None else self._base_env()
            env[lifeline.ENV_VAR] = secret
        process: trio.Process | None = None
        try:
            async with trio.open_nursery() as nursery:
                if child is not None and child.launch_error:
                    child.fatal_error = child.launch_error
                    return
                try:
                    process = await nursery.start(
                        partial(
                            trio.run_process,
                            argv,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=env,
                            start_new_session=True,  # its own process group, killed as one
                            cwd=_working_dir(child.spec) if child is not None else None,
                            check=False,
                            deliver_cancel=partial(self._terminate_held, holder),
                        )
                    )
                except Exception as exc:  # a NUL in its env, a missing program, no memory...
                    message = f"cannot start its process: {_describe(exc)}"
                    log.warning("[%s] %s", child.spec.id if child else "spare", message)
                    if child is not None:
                        child.fatal_error = message
                    return
                holder.process = process
                if child is None:
                    child = await self._wait_for_assignment(holder, process)
                    if child is None:
                        nursery.cancel_scope.cancel()
                        return
                stderr_done = trio.Event()
                nursery.start_soon(self._forward_stderr, child, process, stderr_done)
                if child.is_command:
                    nursery.start_soon(self._await_healthy, child, process)
                else:
                    nursery.start_soon(self._await_ready, child, process, secret)
                nursery.start_soon(self._stop_when_asked, child, process)
                nursery.start_soon(self._watch_liveness, child, process)
                await process.wait()
                with trio.move_on_after(1):
                    await stderr_done.wait()  # keep the last lines: they say why it died
                nursery.cancel_scope.cancel()
        finally:
            if holder.child is not None:
                self._report_exit(holder.child, process)
            elif self._spare is holder:
                self._spare = None

    def _report_exit(self, child: _Child, process: trio.Process | None) -> None:
        del self._children[child.spec.id]
        child.exited.set()
        exit_code = process.returncode if process is not None else None
        ended = ChildExit(
            exit_code=exit_code,
            last_error=child.fatal_error or child.last_error or child.last_line,
            was_stopped=child.stop_requested.is_set(),
            was_ready=child.was_ready,
        )
        log.info("[%s] exited with code %s", child.spec.id, exit_code)
        self._events.child_exited(child.spec.id, ended)

    # ---- spares --------------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        """The router's environment less its own variables (keys, the lifeline)."""
        return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIX)}

    def keep_a_spare(self) -> None:
        """Have one spare child waiting (started in the background if there is none)."""
        if self._settings.use_spares and self._spare is None and not self._is_stopping:
            self._spare = _Holder(None)
            self._nursery.start_soon(self._run, self._spare, name="spare child")

    def _take_spare(self, child: _Child) -> bool:
        """Hand ``child`` to the waiting spare, if there is one it can serve as."""
        spare = self._spare
        if spare is None or spare.process is None or child.is_command:
            return False
        if child.env != self._base_env():
            return False  # its own environment must be there from the process's start
        self._spare = None
        spare.child = child
        spare.assigned.set()
        return True

    async def _wait_for_assignment(self, holder: _Holder, process: trio.Process) -> _Child | None:
        """Wait until a model is handed to this spare; None if it died or we stop first."""
        async with trio.open_nursery() as nursery:

            async def end_if_it_dies() -> None:
                await process.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(end_if_it_dies)
            await holder.assigned.wait()
            nursery.cancel_scope.cancel()
        child = holder.child
        if child is None or process.returncode is not None:
            return None
        assert process.stdin is not None
        arguments = child.argv[child.argv.index("child") + 1 :]
        try:
            await process.stdin.send_all(b"assign " + json.dumps(arguments).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None  # it died just now; its exit is reported as this child's
        return child

    async def _terminate_held(self, holder: _Holder, process: trio.Process) -> None:
        if holder.child is not None:
            await self._terminate(holder.child, process)
            return
        if process.stdin is not None:  # an idle spare: end-of-file makes it exit at once
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
        with trio.move_on_after(KILL_AFTER_TERM_S):
            await process.wait()
            return
        _signal_group(process, signal.SIGKILL)
        await process.wait()

    async def _await_ready(self, child: _Child, process: trio.Process, secret: str) -> None:
        """Read the child's stdout until its ready line; stop it if that takes too long."""
        assert process.stdout is not None
        buffer = b""
        with trio.move_on_after(self._settings.load_timeout_s) as timer:
            async for data in process.stdout:
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    address = lifeline.ready_address(line.decode(errors="replace"), secret)
                    if address is not None and not child.was_ready:
                        child.was_ready = True
                        self._became_ready(child, address, process)
        if timer.cancelled_caught and not child.was_ready:
            child.last_error = (
                f"not ready after {self._settings.load_timeout_s:g}s (load timeout); stopped"
            )
            child.stop_requested.set()

    def _became_ready(self, child: _Child, address: str, process: trio.Process) -> None:
        child.was_ready = True
        child.ready_address = address
        child.became_ready.set()
        self._events.child_ready(child.spec.id, address, process.pid)

    async def _await_healthy(self, child: _Child, process: trio.Process) -> None:
        """A 'command' child is ready when its health path answers 200.

        Its TCP port was free when we picked it, but another local user could bind it first
        and receive our prompts: nothing is sent to the port (not even the health check)
        until the listening socket is seen to belong to the child's own process group.
        """
        assert process.stdout is not None and child.command_address is not None
        address, path = child.command_address, child.spec.health
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_stdout, child, process.stdout)
            with trio.move_on_after(self._settings.load_timeout_s):
                while process.returncode is None:
                    if child.port is not None:
                        owners = await trio.to_thread.run_sync(_listener_pids, child.port)
                        strangers = {pid for pid in owners if _process_group(pid) != process.pid}
                        if strangers:
                            child.fatal_error = (
                                f"port {child.port} is held by a process that is not its own "
                                f"(pid {', '.join(map(str, sorted(strangers)))}); nothing was "
                                "sent to it. Retry, or pass {socket} instead of {port}"
                            )
                            child.stop_requested.set()
                            return
                        if not owners:  # not listening yet
                            await trio.sleep(self._settings.health_poll_s)
                            continue
                    try:
                        if await wire.probe(address, path, timeout_s=HEALTH_TIMEOUT_S) == 200:
                            self._became_ready(child, address, process)
                            return
                    except wire.WireError:
                        pass
                    await trio.sleep(self._settings.health_poll_s)
            if not child.was_ready and process.returncode is None:
                child.fatal_error = (
                    f"GET {path} did not answer 200 within {self._settings.load_timeout_s:g}s "
                    "(load timeout); stopped"
                )
                child.stop_requested.set()

    async def _watch_liveness(self, child: _Child, process: trio.Process) -> None:
        """Once ready, ping the child on a connection of its own; kill it if it stops answering.

        Any answer counts (a stopping child's 503 too): only silence for ``health_misses``
        pings in a row, each given ``health_interval_s``, means it is hung. Its requests then
        end with an error instead of waiting for ever, and the next one starts it again.
        """
        await child.became_ready.wait()
        interval = self._settings.health_interval_s
        path = child.spec.health if child.is_command else "/health"
        misses, silent_since = 0, time.monotonic()
        while process.returncode is None:
            started = time.monotonic()
            try:
                with trio.fail_after(interval):
                    await wire.probe(child.ready_address, path, timeout_s=interval)
                misses, silent_since = 0, time.monotonic()
            except (wire.WireError, trio.TooSlowError):
                misses += 1
            if misses >= self._settings.health_misses:
                silent_s = time.monotonic() - silent_since
                child.fatal_error = (
                    f"not responding for {silent_s:.0f}s ({misses} health checks missed "
                    "in a row); killed. The next request starts it again"
                )
                log.warning("[%s] %s", child.spec.id, child.fatal_error)
                _signal_group(process, signal.SIGKILL)
                return
            await trio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _forward_stdout(self, child: _Child, stdout: trio.abc.ReceiveStream) -> None:
        """Log a 'command' child's stdout too: it has no lifeline there."""
        buffer = b""
        async for data in stdout:
            buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                self._note_line(child, raw.decode(errors="replace").rstrip())

    async def _forward_stderr(self, child: _Child, process: trio.Process, done: trio.Event) -> None:
        """Log each line as ``[model] line``; remember the last one that reads as an error."""
        assert process.stderr is not None
        buffer = b""
        try:
            async for data in process.stderr:
                buffer += data
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    self._note_line(child, raw.decode(errors="replace").rstrip())
            if buffer:
                self._note_line(child, buffer.decode(errors="replace").rstrip())
        finally:
            done.set()

    @staticmethod
    def _note_line(child: _Child, line: str) -> None:
        if not line:
            return
        log.info("[%s] %s", child.spec.id, line)
        child.last_line = line
        if "error" in line.lower():
            child.last_error = line.removeprefix("error: ")

    async def _stop_when_asked(self, child: _Child, process: trio.Process) -> None:
        await child.stop_requested.wait()
        await self._terminate(child, process)

    async def _terminate(self, child: _Child, process: trio.Process) -> None:
        """Graceful stop command, then SIGTERM, then SIGKILL to the process group.

        Cancellation: trio runs this shielded when the router shuts down; its own deadlines
        bound it to ``stop_timeout_s`` plus two seconds.
        """
        child.stop_requested.set()
        timeout_s = child.spec.stop_timeout_s
        if timeout_s is None:
            timeout_s = self._settings.stop_timeout_s
        if child.is_command:  # not our child: it knows no lifeline, SIGTERM is its stop
            _signal_group(process, signal.SIGTERM)
        elif process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.send_all(lifeline.stop_command(timeout_s))
        with trio.move_on_after(timeout_s + 1):
            await process.wait()
            return
        _signal_group(process, signal.SIGTERM)
        with trio.move_on_after(KILL_AFTER_TERM_S):
            await process.wait()
            return
        _signal_group(process, signal.SIGKILL)
        await process.wait()


def _signal_group(process: trio.Process, signum: int) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def _working_dir(spec: ModelSpec) -> str | None:
    """A 'command' runs in its conf.d file's folder, so relative paths read as in the file."""
    if spec.command is not None and spec.source_file is not None:
        return str(spec.source_file.parent)
    return None


def _fill(part: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        part = part.replace(placeholder, value)
    return part


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for children that cannot use a Unix socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def socket_name(model_id: str) -> str:
    """A socket file name for ``model_id`` that no other id can share.

    ``team:model`` and ``team_model`` read alike once made safe for a file name, so the name
    ends with a hash of the exact id; the readable prefix is cut to keep the socket's path
    well under the 108 bytes a Unix socket address may hold.
    """
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:40]
    digest = hashlib.sha256(model_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}.sock"


def _describe(exc: BaseException) -> str:
    """One line for an exception, the first leaf of a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _listener_pids(port: int) -> set[int]:
    """The processes holding a socket that listens on ``port`` of 127.0.0.1 or any address.

    Read from /proc: the socket's inode in /proc/net/tcp{,6}, then the processes whose
    /proc/PID/fd has that inode. A listener we cannot attribute (another user's process
    we may not look into) is reported as pid 0, which is in no group of ours.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, _, port_hex = fields[1].rpartition(":")
            if int(port_hex, 16) == port and address.strip("0") in ("", "100007F", "1"):
                inodes.add(fields[9])
    if not inodes:
        return set()
    targets = {f"socket:[{inode}]" for inode in inodes}
    found: set[int] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = {os.readlink(fd) for fd in fd_dir.iterdir()}
        except OSError:
            continue
        if links & targets:
            found.add(int(fd_dir.parent.name))
    return found or {0}


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
