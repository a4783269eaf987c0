"""Run and stop children: one nursery owns every child process, and their exits become events.

Each child is ``trio.run_process`` in a task of the supervisor's nursery, in a process group of
its own. The supervisor reports what happens (ready, exited) to its owner and decides nothing:
the pool decides what to start and stop. What differs by kind of child lives beside it:
``own_children.py`` (``llama-router child``, the lifeline, spares) and ``command_children.py``
(any OpenAI-compatible server); what they share, in ``child_process.py``.

Stopping a child, by request or because the router shuts down: the graceful stop, then SIGTERM
to its process group after ``stop_timeout_s``, then SIGKILL two seconds later. If the router
itself dies, the kernel closes the children's stdin and they exit at once (a command's guard
sees it too; a spare paused by ``requests_running`` is woken first, see there).

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
from router.options_table import ROUTER_FLAG_ENV
from router.processes import command_children, lifeline, own_children
from router.processes.child_process import (
    KILL_AFTER_TERM_S,
    Child,
    describe,
    each_line,
    log_lines,
    signal_group,
    terminate,
    wait_ended,
    watch_liveness,
)
from router.spec import ModelSpec

log = logging.getLogger("router.children")

# The router's own variables (API keys above all) never reach a child: third-party commands
# included. A model's [env] may still set one on purpose.
_PRIVATE_ENV_PREFIX = "LLAMA_ROUTER_"
# llama-server's names for the router's flags: a llama-server 'command' model would read
# LLAMA_API_KEY as its own key, LLAMA_ARG_MODELS_DIR as an order to be a router.
_PRIVATE_ENV_NAMES = frozenset(ROUTER_FLAG_ENV.values())


@dataclass(frozen=True)
class ChildExit:
    """How a child ended."""

    exit_code: int | None
    last_error: str  # why it ended, in plain words (``Child.exit_reason``); "" if it said nothing
    was_stopped: bool  # we asked it to stop
    was_ready: bool  # it had announced readiness
    failure_kind: str = ""  # why it could not load, in a word, when it said so on its lifeline


def _ignore_output(model_id: str, line: str, stream: str) -> None:
    """No one reads the children's lines but the log (until the pool attaches)."""


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
    # A spare's process whose model is unloaded waits for the next one instead of exiting, up
    # to this many models in all, and while its waiting RSS grew by no more than this much.
    models_per_process: int = 32
    spare_growth_mib: int = 64
    # Whether spares still importing are paused while requests run (requests_running). None:
    # only when the router leads its session, where the kernel can wake them should it die.
    pause_importing_spares: bool | None = None
    # A new spare is held back so for this long at most: past it, it imports whatever runs
    # (under requests that never stop, the next load would otherwise pay for its imports).
    spare_pause_max_s: float = 5.0


@dataclass
class _Holder:
    """One process the supervisor runs: a model's child, or a spare waiting for one."""

    child: Child | None
    assigned: trio.Event = field(default_factory=trio.Event)
    process: trio.Process | None = None  # set once spawned (a spare is usable from then)
    is_spare_process: bool = False  # started as a spare: it can serve one model after another
    is_waiting: bool = False  # it said it waits, imports done, with no model
    is_paused: bool = False  # stopped (SIGSTOP) while requests run: see requests_running
    may_pause: bool = True  # False once held back for spare_pause_max_s
    models_served: int = 0
    waiting_rss_mib: int | None = None  # its resident memory the first time it waited

    def note_line(self, line: str) -> None:
        """A line of its stderr: its model's while it has one."""
        if self.child is not None:
            self.child.note_line(line)
        elif line:
            log.info("[spare child] %s", line)


class _HolderLifeline:
    """What a process's lifeline lines do (``own_children.read_lifeline``'s listener)."""

    def __init__(self, supervisor: Supervisor, holder: _Holder, process: trio.Process) -> None:
        self._supervisor, self._holder, self._process = supervisor, holder, process

    def imports_done(self) -> None:
        self._holder.is_waiting = self._holder.child is None
        self._holder.waiting_rss_mib = own_children.resident_mib(self._process.pid)
        self._supervisor._trim_spares()  # a fresh spare is ready: one past its bound may go

    def back_to_spare(self) -> None:
        if self._holder.child is not None:
            self._holder.child.went_back_to_spare.set()

    def ready(self, address: str) -> None:
        child = self._holder.child
        if child is not None and not child.was_ready:
            self._supervisor._became_ready(child, address, self._process)

    def failed(self, failure: lifeline.Failure) -> None:
        if self._holder.child is not None:
            self._holder.child.fatal_error = failure.message
            self._holder.child.failure_kind = failure.kind


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
        self._are_requests_running = False  # the pool says: see requests_running
        pause = settings.pause_importing_spares
        self._pauses_spares = os.getsid(0) == os.getpid() if pause is None else pause
        # Every line a model's child prints, as (model id, line, stream): the pool's once it
        # attaches (its log view and ``/models/sse?logs=1``).
        self.on_output: Callable[[str, str, str], None] = _ignore_output

    def socket_path(self, model_id: str) -> Path:
        """Where ``model_id``'s child listens: unique per id (a hash), readable (a prefix)."""
        return self._settings.runtime_dir / own_children.socket_name(model_id)

    def start(self, spec: ModelSpec, *, extra_args: Sequence[str] = ()) -> list[str]:
        """Start ``spec``'s child in the background; return its argv. One child per model."""
        if spec.id in self._children:
            raise RuntimeError(f"model {spec.id!r} already has a child")
        child = Child(spec=spec, argv=[], env={})
        child.report_line = partial(self._report_line, spec.id)
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
        self._nursery.start_soon(self._keep_spares_once_loaded, child, name="spare refill")
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
        """Run one process from spawn to exit: a model's child, or a spare until it gets one
        (then, while it goes back to being a spare each time its model is unloaded, the next
        model's, and so on)."""
        secret = lifeline.new_secret()
        child = holder.child
        if child is not None and child.is_command:
            argv, env = child.argv, dict(child.env)  # a 'command': no lifeline, no spare
        else:
            argv = child.argv if child is not None else own_children.SPARE_ARGV
            env = dict(child.env) if child is not None else self._base_env()
            env[lifeline.ENV_VAR] = secret
        holder.is_spare_process = child is None
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
                            # Its own process group, killed as one. A spare's stays in the
                            # router's session: if the router dies while the spare is paused
                            # (requests_running), the kernel wakes the orphaned group (SIGHUP,
                            # SIGCONT) and it exits; in a session of its own none would wake it.
                            **_new_group(session=child is not None),
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
                if child is None and self._are_requests_running:
                    self._pause(holder, True)
                if child is not None and child.is_command:
                    await self._supervise_command(nursery, child, process)
                else:
                    await self._run_own(nursery, holder, process, secret)
                nursery.cancel_scope.cancel()
        finally:
            if holder.child is not None:
                self._report_exit(holder.child, process)
            elif holder in self._spares:
                self._spares.remove(holder)

    async def _run_own(
        self, nursery: trio.Nursery, holder: _Holder, process: trio.Process, secret: str
    ) -> None:
        """Our own child's process, for its whole life: each model it serves in turn."""
        assert process.stderr is not None
        stderr_done = trio.Event()
        nursery.start_soon(self._log_stderr, holder, process.stderr, stderr_done)
        listener = _HolderLifeline(self, holder, process)
        nursery.start_soon(own_children.read_lifeline, process, secret, listener)
        while True:
            child = holder.child
            if child is None or holder.is_spare_process:
                child = await self._wait_for_assignment(holder, process)
                if child is None:
                    return
            await self._supervise_own(holder, child, process)
            if process.returncode is not None:
                with trio.move_on_after(1):
                    await stderr_done.wait()  # keep the last lines: they say why it died
                return
            self._back_to_spare(holder, child)

    async def _supervise_own(self, holder: _Holder, child: Child, process: trio.Process) -> None:
        """Watch one model's life in ``process``: its load, its stop and its liveness, until
        the process exits or goes back to being a spare."""
        settings = self._settings
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(own_children.bound_load, child, load_timeout_s=settings.load_timeout_s)
            )
            nursery.start_soon(self._stop_when_asked, child, process, holder)
            nursery.start_soon(
                partial(
                    watch_liveness, child, process,
                    interval_s=settings.health_interval_s, misses_allowed=settings.health_misses,
                )
            )  # fmt: skip
            await wait_ended(child, process)
            nursery.cancel_scope.cancel()

    async def _supervise_command(
        self, nursery: trio.Nursery, child: Child, process: trio.Process
    ) -> None:
        """Watch a spawned command until it exits: its output, readiness, stop and liveness."""
        settings = self._settings
        assert process.stderr is not None and process.stdout is not None
        stderr_done = trio.Event()
        nursery.start_soon(log_lines, child, process.stderr, stderr_done, "stderr")
        nursery.start_soon(log_lines, child, process.stdout, trio.Event(), "stdout")
        nursery.start_soon(
            partial(
                command_children.await_healthy, child, process,
                load_timeout_s=settings.load_timeout_s, poll_s=settings.health_poll_s,
                on_ready=self._became_ready,
            )
        )  # fmt: skip
        nursery.start_soon(self._stop_when_asked, child, process, None)
        nursery.start_soon(
            partial(
                watch_liveness, child, process,
                interval_s=settings.health_interval_s, misses_allowed=settings.health_misses,
            )
        )  # fmt: skip
        await process.wait()
        with trio.move_on_after(1):
            await stderr_done.wait()  # keep the last lines: they say why it died

    async def _log_stderr(
        self, holder: _Holder, stream: trio.abc.ReceiveStream, done: trio.Event
    ) -> None:
        try:
            async for line in each_line(stream):
                holder.note_line(line.rstrip())
        finally:
            done.set()

    def _became_ready(self, child: Child, address: str, process: trio.Process) -> None:
        child.was_ready = True
        child.ready_address = address
        child.became_ready.set()
        self._events.child_ready(child.spec.id, address, process.pid)

    def _report_exit(self, child: Child, process: trio.Process | None) -> None:
        """Tell the owner that ``child`` is over (its process exited, or went back to being a
        spare: then its exit code is 0, as after any graceful stop)."""
        del self._children[child.spec.id]
        child.exited.set()
        exit_code = process.returncode if process is not None else None
        if child.went_back_to_spare.is_set() and exit_code is None:
            exit_code = 0
        ended = ChildExit(
            exit_code=exit_code,
            last_error=child.exit_reason(exit_code),
            was_stopped=child.stop_requested.is_set(),
            was_ready=child.was_ready,
            failure_kind=child.failure_kind,
        )
        log.debug("[%s] exited with code %s", child.spec.id, exit_code)  # the pool's event says
        self._events.child_exited(child.spec.id, ended)

    def _report_line(self, model_id: str, line: str, stream: str) -> None:
        self.on_output(model_id, line, stream)

    def _base_env(self) -> dict[str, str]:
        """The router's environment less its own variables (keys, the lifeline)."""
        return {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_PRIVATE_ENV_PREFIX) and k not in _PRIVATE_ENV_NAMES
        }

    async def _stop_when_asked(
        self, child: Child, process: trio.Process, holder: _Holder | None
    ) -> None:
        await child.stop_requested.wait()
        back_to_spare = holder is not None and self._may_serve_again(holder)
        await terminate(child, process, self._stop_timeout_s(child), back_to_spare=back_to_spare)

    def _stop_timeout_s(self, child: Child) -> float:
        timeout_s = child.spec.stop_timeout_s
        return self._settings.stop_timeout_s if timeout_s is None else timeout_s

    async def _terminate_held(self, holder: _Holder, process: trio.Process) -> None:
        if holder.child is not None:
            await terminate(holder.child, process, self._stop_timeout_s(holder.child))
            if process.returncode is None:  # it went back to being a spare: end it as one
                await self._end_spare(process)
            return
        if not holder.is_waiting:
            # Still importing, it would read its end-of-file only after its imports (a second
            # of CPU, often paused): it holds nothing, so it goes at once.
            signal_group(process, signal.SIGKILL)
        await self._end_spare(process)

    async def _end_spare(self, process: trio.Process) -> None:
        signal_group(process, signal.SIGCONT)  # a paused spare must run to read its end-of-file
        if process.stdin is not None:  # an idle spare: end-of-file makes it exit at once
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
        with trio.move_on_after(KILL_AFTER_TERM_S):
            await process.wait()
            return
        log.warning("a spare (pid %d) did not exit on end-of-file: killed", process.pid)
        signal_group(process, signal.SIGKILL)
        await process.wait()

    # ---- spares --------------------------------------------------------------------------------

    async def _keep_spares_once_loaded(self, child: Child) -> None:
        """Replace the spare a load took once that load is over: a new spare's imports (about
        a second of CPU) would otherwise compete with the model's load on a small machine. A
        swap meanwhile needs none: the unloaded process becomes the spare."""
        async with trio.open_nursery() as nursery:
            for event in (child.became_ready, child.exited):
                nursery.start_soon(_cancel_after, event, nursery.cancel_scope)
        self.keep_spares()

    def keep_spares(self) -> None:
        """Have ``settings.spares`` spare children waiting (those missing start now, in the
        background: each takes the time of Python's and llama.cpp's imports to be ready)."""
        while len(self._fresh_spares()) < self._settings.spares and not self._is_stopping:
            spare = _Holder(None)
            self._spares.append(spare)
            self._nursery.start_soon(self._run, spare, name="spare child")

    def requests_running(self, are_running: bool) -> None:
        """Pause the spares still importing while requests run; resume them when none do.

        A spare's imports take about a second of CPU. On a small machine they would take it
        from the inference threads of the model just loaded (a tiny model's 1-token completion
        went from 30 to 300 ms while a spare started beside it), so a spare imports in the
        gaps between requests only. The pool calls this when its count of admitted requests
        leaves or reaches zero; a spare that a load takes or that ends is resumed first. A new
        spare is held back so for ``spare_pause_max_s`` at most, then imports whatever runs:
        under requests that never stop (a swap after another), the next load would otherwise
        pay for all of its imports.

        A paused spare cannot read the end of its stdin that tells a child its router died: the
        kernel wakes it (SIGHUP, SIGCONT) when its process group becomes orphaned, which is
        certain only when the router leads its session (systemd, a container's init,
        ``setsid``): whatever adopts the spare is then outside that session. Elsewhere (a shell's
        job, a supervisor that starts programs in its own session) spares are not paused
        (``pause_importing_spares``).
        """
        self._are_requests_running = are_running
        for spare in self._spares:
            # One that said it is ready while paused (the line read after) is resumed too.
            self._pause(spare, are_running and not spare.is_waiting)

    def _pause(self, holder: _Holder, paused: bool) -> None:
        """Stop or continue ``holder``'s process group (SIGSTOP, SIGCONT), once each way."""
        paused = paused and self._pauses_spares and holder.may_pause
        if holder.process is not None and holder.is_paused != paused:
            holder.is_paused = paused
            signal_group(holder.process, signal.SIGSTOP if paused else signal.SIGCONT)

    def spare_report(self) -> list[dict[str, int | bool | None]]:
        """The waiting spares: each one's pid and resident memory (MiB), which is what it
        costs while it waits (None while it starts), whether it is ready (its imports done),
        whether it is paused while requests run, and how many models it has served."""
        return [
            {
                "pid": spare.process.pid,
                "rss_mib": own_children.resident_mib(spare.process.pid),
                "is_ready": spare.is_waiting,
                "is_paused": spare.is_paused,
                "models_served": spare.models_served,
            }
            for spare in self._spares
            if spare.process is not None
        ]

    def _take_spare(self, child: Child) -> bool:
        """Hand ``child`` to a waiting spare, if there is one it can serve as: a ready one
        (imports done) first, under its bound of models before past it, else the oldest (the
        nearest to ready; a new process would only be further behind)."""
        started = [spare for spare in self._spares if spare.process is not None]
        ready = sorted(
            (spare for spare in started if spare.is_waiting), key=self._is_overdue
        )  # a stable sort: oldest first among the fresh, then among those past their bound
        spare = next(iter(ready), None) or next(iter(started), None)
        if spare is None or spare.process is None or child.is_command:
            return False
        if child.env != self._base_env():
            return False  # its own environment must be there from the process's start
        if not own_children.can_run_in_a_spare(child.argv):
            return False  # a plugin wrapped or changed the command (numactl, nice...)
        self._spares.remove(spare)
        log.info(
            "[%s] handed to a spare child (pid %d, %s, %s MiB before its model)",
            child.spec.id, spare.process.pid,
            "ready" if spare.is_waiting else "still starting",
            own_children.resident_mib(spare.process.pid),
        )  # fmt: skip
        self._pause(spare, False)  # it imports for the load now, whatever else runs
        spare.child = child
        spare.is_waiting = False
        spare.assigned.set()
        return True

    async def _wait_for_assignment(self, holder: _Holder, process: trio.Process) -> Child | None:
        """Wait until a model is handed to this spare; None if it died or we stop first."""
        async with trio.open_nursery() as nursery:

            async def end_if_it_dies() -> None:
                await process.wait()
                nursery.cancel_scope.cancel()

            async def hold_back_no_longer() -> None:
                await trio.sleep(self._settings.spare_pause_max_s)
                holder.may_pause = False
                self._pause(holder, False)

            nursery.start_soon(end_if_it_dies)
            if holder.may_pause and not holder.is_waiting:  # a new spare, still importing
                nursery.start_soon(hold_back_no_longer)
            await holder.assigned.wait()
            nursery.cancel_scope.cancel()
        child = holder.child
        if child is None or process.returncode is not None:
            return None
        if not await own_children.assign_to_spare(process, child):
            return None  # it died just now; its exit is reported as this child's
        return child

    def _may_serve_again(self, holder: _Holder) -> bool:
        """Whether a stop should leave ``holder``'s process waiting as a spare: it started as
        one, spares are on, and it has served fewer models than ``models_per_process``, or no
        spare that has not is ready to take its place.

        The bound is soft: a process past it that ended instead would leave the next load a
        spare still importing (a second of CPU; paused while requests run), and in a swap
        after swap that load, and every request queued behind it, waited for those imports.
        Where loads keep taking each new spare before this process's next unload, it serves on
        past the bound for as long: its growth (``spare_growth_mib``) still ends it."""
        return (
            holder.is_spare_process
            and self._settings.spares > 0
            and not self._is_stopping
            and (
                holder.models_served + 1 < self._settings.models_per_process
                or not any(spare.is_waiting for spare in self._fresh_spares())
            )
        )

    def _is_overdue(self, spare: _Holder) -> bool:
        """Whether ``spare``'s process has served its ``models_per_process``."""
        return spare.models_served >= self._settings.models_per_process

    def _fresh_spares(self) -> list[_Holder]:
        """The spares under their bound: those ``settings.spares`` counts."""
        return [spare for spare in self._spares if not self._is_overdue(spare)]

    def _back_to_spare(self, holder: _Holder, child: Child) -> None:
        """``child``'s model is freed and its process waits: report the model's exit, with
        the process already among the spares so that the load that follows (a swap) gets it."""
        assert holder.process is not None
        holder.child, holder.assigned = None, trio.Event()
        holder.models_served += 1
        rss_mib = own_children.resident_mib(holder.process.pid)
        baseline = holder.waiting_rss_mib
        has_grown = (
            rss_mib is None
            or baseline is None
            or rss_mib - baseline > self._settings.spare_growth_mib
        )
        if has_grown or self._is_stopping:
            log.info(
                "[%s] its process (pid %d, %s MiB, %s MiB when new) ends instead of waiting",
                child.spec.id, holder.process.pid, rss_mib, baseline,
            )  # fmt: skip
            holder.assigned.set()  # with no child: it ends
        else:
            log.info(
                "[%s] unloaded; its process (pid %d, %s MiB) waits as a spare%s",
                child.spec.id, holder.process.pid, rss_mib,
                ", past its bound of models until a new spare is ready"
                if self._is_overdue(holder) else "",
            )  # fmt: skip
            holder.is_waiting = True
            self._spares.insert(0, holder)
        self._report_exit(child, holder.process)
        self._trim_spares()

    def _trim_spares(self) -> None:
        """End the spares beyond ``settings.spares`` (a model unloaded with no load after it):
        those still importing first (a ready one serves the next load at once), then those
        that served the most models. A spare past its bound of models waits on beside them
        only until one under it is ready."""
        fresh = self._fresh_spares()
        ending = [spare for spare in self._spares if self._is_overdue(spare)]
        if not any(spare.is_waiting for spare in fresh):
            ending.sort(key=lambda spare: spare.models_served)
            del ending[: self._settings.spares]  # kept: the least used, as many as asked for
        while len(fresh) > self._settings.spares:
            spare = min(fresh, key=lambda spare: (spare.is_waiting, -spare.models_served))
            fresh.remove(spare)
            ending.append(spare)
        for spare in ending:
            self._spares.remove(spare)
            spare.assigned.set()  # with no child: it ends (at once if still importing)


def _new_group(*, session: bool) -> dict[str, Any]:
    """``Popen`` arguments for a process that leads a new group, in a new session or not."""
    return {"start_new_session": True} if session else {"process_group": 0}


async def _cancel_after(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
