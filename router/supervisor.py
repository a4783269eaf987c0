"""Run and stop children: one nursery owns every child process, and their exits become events.

Each child is ``trio.run_process`` in a task of the supervisor's nursery, in a process group of
its own, speaking the lifeline protocol (``lifeline.py``) over stdin/stdout and serving on a
Unix socket in the router's private runtime directory. The supervisor reports what happens
(ready, exited) to its owner and decides nothing: the pool decides what to start and stop.

Stopping a child, by request or because the router shuts down: the graceful ``stop`` command,
then SIGTERM to its process group after ``stop_timeout_s``, then SIGKILL two seconds later.
If the router itself dies, the kernel closes the children's stdin and they exit at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import httpx
import trio

from router import lifeline
from router.catalog import ModelSpec
from router.confd import child_argv, effective_child_options

log = logging.getLogger("router.children")

KILL_AFTER_TERM_S = 2.0
_SPARE_ARGV = [sys.executable, "-m", "router", "child", "--spare"]


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
    use_spares: bool = True  # keep a pre-started child waiting for the next load


@dataclass
class _Child:
    spec: ModelSpec
    argv: list[str]
    env: dict[str, str]
    port: int | None  # a 'command' child's TCP port; None for our own children (Unix socket)
    stop_requested: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    last_error: str = ""
    last_line: str = ""
    was_ready: bool = False


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

    def command_for(
        self, spec: ModelSpec, extra_args: Sequence[str] = (), port: int | None = None
    ) -> list[str]:
        """The child's argv: our own child with its options, or the spec's own command."""
        if spec.command is not None:
            values = {
                "{port}": str(port),
                "{host}": "127.0.0.1",
                "{model}": str(spec.path) if spec.path else "",
            }
            # Under the guard, which stops it if the router dies (it knows no lifeline).
            return [
                sys.executable, "-m", "router.guard",
                *(_fill(part, values) for part in spec.command),
            ]  # fmt: skip
        socket_path = self._settings.runtime_dir / f"{_safe_name(spec.id)}.sock"
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
        port = _free_port() if spec.command is not None else None
        argv = self.command_for(spec, extra_args, port)
        env = {**os.environ, **spec.env}
        env.pop(lifeline.ENV_VAR, None)
        if self._adjust_launch is not None:
            self._adjust_launch(spec, argv, env)
        child = _Child(spec=spec, argv=argv, env=env, port=port)
        self._children[spec.id] = child
        if not self._take_spare(child):
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
        if child is not None and child.port is not None:
            argv, env = child.argv, dict(child.env)  # a 'command': no lifeline, no spare
        else:
            argv = child.argv if child is not None else _SPARE_ARGV
            env = dict(child.env) if child is not None else self._base_env()
            env[lifeline.ENV_VAR] = secret
        process: trio.Process | None = None
        try:
            async with trio.open_nursery() as nursery:
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
                holder.process = process
                if child is None:
                    child = await self._wait_for_assignment(holder, process)
                    if child is None:
                        nursery.cancel_scope.cancel()
                        return
                stderr_done = trio.Event()
                nursery.start_soon(self._forward_stderr, child, process, stderr_done)
                if child.port is None:
                    nursery.start_soon(self._await_ready, child, process, secret)
                else:
                    nursery.start_soon(self._await_healthy, child, process)
                nursery.start_soon(self._stop_when_asked, child, process)
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
            last_error=child.last_error or child.last_line,
            was_stopped=child.stop_requested.is_set(),
            was_ready=child.was_ready,
        )
        log.info("[%s] exited with code %s", child.spec.id, exit_code)
        self._events.child_exited(child.spec.id, ended)

    # ---- spares --------------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop(lifeline.ENV_VAR, None)
        return env

    def keep_a_spare(self) -> None:
        """Have one spare child waiting (started in the background if there is none)."""
        if self._settings.use_spares and self._spare is None and not self._is_stopping:
            self._spare = _Holder(None)
            self._nursery.start_soon(self._run, self._spare, name="spare child")

    def _take_spare(self, child: _Child) -> bool:
        """Hand ``child`` to the waiting spare, if there is one it can serve as."""
        spare = self._spare
        if spare is None or spare.process is None or child.port is not None:
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
                        self._events.child_ready(child.spec.id, address, process.pid)
        if timer.cancelled_caught and not child.was_ready:
            child.last_error = (
                f"not ready after {self._settings.load_timeout_s:g}s (load timeout); stopped"
            )
            child.stop_requested.set()

    async def _await_healthy(self, child: _Child, process: trio.Process) -> None:
        """A 'command' child is ready when its health path answers 200."""
        assert process.stdout is not None
        url = f"http://127.0.0.1:{child.port}{child.spec.health}"
        async with httpx.AsyncClient(timeout=2.0) as client, trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_stdout, child, process.stdout)
            with trio.move_on_after(self._settings.load_timeout_s):
                while process.returncode is None:
                    try:
                        if (await client.get(url)).status_code == 200:
                            child.was_ready = True
                            self._events.child_ready(
                                child.spec.id, f"http://127.0.0.1:{child.port}", process.pid
                            )
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(self._settings.health_poll_s)
            if not child.was_ready and process.returncode is None:
                child.last_error = (
                    f"{url} did not answer 200 within {self._settings.load_timeout_s:g}s; stopped"
                )
                child.stop_requested.set()

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
        if child.port is not None:  # not our child: it knows no lifeline, SIGTERM is its stop
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


def _safe_name(model_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:80]
