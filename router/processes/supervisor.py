"""Run and stop children: one nursery owns every child process, and their exits become events.

Each child is ``trio.run_process`` in a task of the supervisor's nursery, in a process group of
its own. The supervisor reports what happens (ready, exited) to its owner and decides nothing:
the pool decides what to start and stop. What differs by kind of child lives beside it:
``own_children.py`` (``llama-router child``, the lifeline, spares) and ``command_children.py``
(any OpenAI-compatible server); what they share, in ``child_process.py``.

Stopping a child, by request or because the router shuts down: the graceful stop, then SIGTERM
to its process group after ``stop_timeout_s``, then SIGKILL two seconds later. If the router
itself dies, the kernel closes the children's stdin and they exit at once (a command's guard
sees it too).

Once ready, every child is pinged (``GET /health`` on a connection of its own) every
``health_interval_s``; one that misses ``health_misses`` pings in a row (stopped with SIGSTOP,
deadlocked, swapping) is declared hung and killed, which the pool reports as a failure.

Nothing a model's configuration holds can stop the router: a child that cannot even be spawned
(a bad environment, a missing program) is reported as a child that exited at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from router.child_options import effective_child_options
from router.processes import command_children, lifeline, own_children
from router.processes.child_process import (
    KILL_AFTER_TERM_S,
    Child,
    describe,
    log_lines,
    signal_group,
    terminate,
    watch_liveness,
)
from router.spec import ModelSpec

log = logging.getLogger("router.children")

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
    failure_kind: str = ""  # why it could not load, in a word, when it said so on its lifeline


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
    spares: int = 1  # pre-started children kept waiting for the next load (0: none)


@dataclass
class _Holder:
    """One process the supervisor runs: a model's child, or a spare waiting for one."""

    child: Child | None
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
        self._children: dict[str, Child] = {}
        self._spares: list[_Holder] = []  # oldest first: the likeliest to be ready
        self._is_stopping = False

    def socket_path(self, model_id: str) -> Path:
        """Where ``model_id``'s child listens: unique per id (a hash), readable (a prefix)."""
        return self._settings.runtime_dir / own_children.socket_name(model_id)

    def start(self, spec: ModelSpec, *, extra_args: Sequence[str] = ()) -> list[str]:
        """Start ``spec``'s child in the background; return its argv. One child per model."""
        if spec.id in self._children:
            raise RuntimeError(f"model {spec.id!r} already has a child")
        child = Child(spec=spec, argv=[], env={})
        socket_path = self.socket_path(spec.id)
        if self._is_stopping:  # a request still queued as the router stops: never a new child
            child.launch_error = "the router is shutting down"
        try:
            if spec.command is not None:
                child.command_address, child.port = command_children.command_address(
                    spec, socket_path
                )
                child.argv = command_children.command_argv(spec, socket_path, child.port)
            else:
                options = effective_child_options(
                    spec, self._settings.child_defaults, self._settings.child_options
                )
                child.argv = own_children.own_child_argv(spec, socket_path, options, extra_args)
            child.env = {**self._base_env(), **spec.env}
            if self._adjust_launch is not None:
                self._adjust_launch(spec, child.argv, child.env)
        except Exception as exc:  # whatever it is, it fails this model, never the router
            log.exception("[%s] cannot build its command", spec.id)
            child.launch_error = f"cannot start it: {describe(exc)}"
        self._children[spec.id] = child
        if child.launch_error or not self._take_spare(child):
            self._nursery.start_soon(self._run, _Holder(child), name=f"child {spec.id}")
        self.keep_spares()  # for the next load: a back-to-back swap finds one
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
        spares, self._spares = self._spares, []
        for spare in spares:
            spare.assigned.set()  # with no child: it ends
        while self._children:  # those started meanwhile fail at once (``start``)
            children = list(self._children.values())
            for child in children:
                child.stop_requested.set()
            for child in children:
                await child.exited.wait()

    async def _run(self, holder: _Holder) -> None:
        """Run one process from spawn to exit: a model's child, or a spare until it gets one."""
        secret = lifeline.new_secret()
        child = holder.child
        if child is not None and child.is_command:
            argv, env = child.argv, dict(child.env)  # a 'command': no lifeline, no spare
        else:
            argv = child.argv if child is not None else own_children.SPARE_ARGV
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
                            cwd=command_children.working_dir(child.spec) if child else None,
                            check=False,
                            deliver_cancel=partial(self._terminate_held, holder),
                        )
                    )
                except Exception as exc:  # a NUL in its env, a missing program, no memory...
                    message = f"cannot start its process: {describe(exc)}"
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
                await self._supervise(nursery, child, process, secret)
                nursery.cancel_scope.cancel()
        finally:
            if holder.child is not None:
                self._report_exit(holder.child, process)
            elif holder in self._spares:
                self._spares.remove(holder)

    async def _supervise(
        self, nursery: trio.Nursery, child: Child, process: trio.Process, secret: str
    ) -> None:
        """Watch a spawned child until it exits: its output, readiness, stop and liveness."""
        settings = self._settings
        assert process.stderr is not None and process.stdout is not None
        stderr_done = trio.Event()
        nursery.start_soon(log_lines, child, process.stderr, stderr_done)
        if child.is_command:
            nursery.start_soon(log_lines, child, process.stdout, trio.Event())
            nursery.start_soon(
                partial(
                    command_children.await_healthy, child, process,
                    load_timeout_s=settings.load_timeout_s, poll_s=settings.health_poll_s,
                    on_ready=self._became_ready,
                )
            )  # fmt: skip
        else:
            nursery.start_soon(
                partial(
                    own_children.await_ready, child, process, secret,
                    load_timeout_s=settings.load_timeout_s, on_ready=self._became_ready,
                )
            )  # fmt: skip
        nursery.start_soon(self._stop_when_asked, child, process)
        nursery.start_soon(
            partial(
                watch_liveness, child, process,
                interval_s=settings.health_interval_s, misses_allowed=settings.health_misses,
            )
        )  # fmt: skip
        await process.wait()
        with trio.move_on_after(1):
            await stderr_done.wait()  # keep the last lines: they say why it died

    def _became_ready(self, child: Child, address: str, process: trio.Process) -> None:
        child.was_ready = True
        child.ready_address = address
        child.became_ready.set()
        self._events.child_ready(child.spec.id, address, process.pid)

    def _report_exit(self, child: Child, process: trio.Process | None) -> None:
        del self._children[child.spec.id]
        child.exited.set()
        exit_code = process.returncode if process is not None else None
        ended = ChildExit(
            exit_code=exit_code,
            last_error=child.fatal_error or child.last_error or child.last_line,
            was_stopped=child.stop_requested.is_set(),
            was_ready=child.was_ready,
            failure_kind=child.failure_kind,
        )
        log.info("[%s] exited with code %s", child.spec.id, exit_code)
        self._events.child_exited(child.spec.id, ended)

    def _base_env(self) -> dict[str, str]:
        """The router's environment less its own variables (keys, the lifeline)."""
        return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIX)}

    async def _stop_when_asked(self, child: Child, process: trio.Process) -> None:
        await child.stop_requested.wait()
        await terminate(child, process, self._stop_timeout_s(child))

    def _stop_timeout_s(self, child: Child) -> float:
        timeout_s = child.spec.stop_timeout_s
        return self._settings.stop_timeout_s if timeout_s is None else timeout_s

    async def _terminate_held(self, holder: _Holder, process: trio.Process) -> None:
        if holder.child is not None:
            await terminate(holder.child, process, self._stop_timeout_s(holder.child))
            return
        if process.stdin is not None:  # an idle spare: end-of-file makes it exit at once
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
        with trio.move_on_after(KILL_AFTER_TERM_S):
            await process.wait()
            return
        signal_group(process, signal.SIGKILL)
        await process.wait()

    # ---- spares --------------------------------------------------------------------------------

    def keep_spares(self) -> None:
        """Have ``settings.spares`` spare children waiting (those missing start now, in the
        background: each takes the time of Python's and llama.cpp's imports to be ready)."""
        while len(self._spares) < self._settings.spares and not self._is_stopping:
            spare = _Holder(None)
            self._spares.append(spare)
            self._nursery.start_soon(self._run, spare, name="spare child")

    def spare_report(self) -> list[dict[str, int | None]]:
        """The waiting spares: each one's pid and resident memory (MiB), which is what it
        costs while it waits (None while it starts)."""
        return [
            {"pid": spare.process.pid, "rss_mib": own_children.resident_mib(spare.process.pid)}
            for spare in self._spares
            if spare.process is not None
        ]

    def _take_spare(self, child: Child) -> bool:
        """Hand ``child`` to the oldest waiting spare (the likeliest to have finished its
        imports), if there is one it can serve as."""
        spare = next((spare for spare in self._spares if spare.process is not None), None)
        if spare is None or spare.process is None or child.is_command:
            return False
        if child.env != self._base_env():
            return False  # its own environment must be there from the process's start
        if not own_children.can_run_in_a_spare(child.argv):
            return False  # a plugin wrapped or changed the command (numactl, nice...)
        self._spares.remove(spare)
        log.info(
            "[%s] handed to a spare child (pid %d, %s MiB before its model)",
            child.spec.id, spare.process.pid, own_children.resident_mib(spare.process.pid),
        )  # fmt: skip
        spare.child = child
        spare.assigned.set()
        return True

    async def _wait_for_assignment(self, holder: _Holder, process: trio.Process) -> Child | None:
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
        if not await own_children.assign_to_spare(process, child):
            return None  # it died just now; its exit is reported as this child's
        return child
