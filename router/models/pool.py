"""The models' state, in one place: requests wait here, and every change re-runs the scheduler.

The pool owns each model's state machine (unloaded → loading → loaded → unloading → unloaded)
and the FIFO queue of requests. Everything that changes state (a request arrives, finishes or
leaves; a child becomes ready or exits) happens on the Trio thread and ends with
``_reschedule()``: a snapshot goes to the pure ``scheduler.plan``, and the plan is carried out
at once, before any other task runs. So a decision is never made on a stale reading, which is
how peers ended up with requests waiting forever during an unload. One shortcut, the hot path:
with nobody queued, a request for a loaded model is admitted, and its end counted, without a
round (the scheduler's first rule; an empty queue leaves it nothing else to decide).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from router.errors import (
    Conflict,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    QueueFull,
    RouterError,
    Unavailable,
)
from router.hooks.plugin_types import PluginContext
from router.hooks.plugins import Plugins
from router.models.confd import ConfigProblem
from router.models.event_log import LifecycleLog
from router.models.events import (
    ALL_MODELS,
    LOG_LINE,
    MODEL_ADD,
    MODEL_PIN,
    MODEL_REMOVE,
    MODEL_STATUS,
    MODELS_RELOAD,
    STATUS_CHANGE,
    UNLOAD_EVICTED,
    UNLOAD_IDLE,
    UNLOAD_REMOVED,
    UNLOAD_REQUESTED,
    UNLOAD_SETTINGS,
    UNLOAD_SHUTDOWN,
    Event,
    EventHub,
)
from router.models.pool_hooks import PoolHooks
from router.models.remote import refuse_remote, remote_lease
from router.models.scheduler import (
    HOLDS_NO_CHILD,
    ModelView,
    Status,
    Waiting,
    backoff_s,
    idle_expired,
    plan,
)
from router.models.state import ModelState
from router.processes.supervisor import ChildExit, Supervisor
from router.processes.wire import ChildConnections
from router.spec import ModelSpec

log = logging.getLogger("router.models.pool")


@dataclass
class _Waiter:
    ticket: int
    model: str
    done: trio.Event = field(default_factory=trio.Event)
    error: RouterError | None = None


class ModelPool:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        *,
        models_max: int,
        slot_timeout_s: float = 60.0,
        sleep_idle_s: float = 0.0,
        clock: Callable[[], float] = trio.current_time,
        plugins: Plugins,
        child_defaults: Mapping[str, Any] | None = None,
        child_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.sleep_idle_s = sleep_idle_s  # the ttl of models without one (0: none)
        specs = self._with_sleep(specs)
        self.models = {model_id: ModelState(spec) for model_id, spec in specs.items()}
        self.models_max = models_max
        self.slot_timeout_s = slot_timeout_s
        self._clock = clock
        self._queue: list[_Waiter] = []
        self._tickets = itertools.count()
        self.problems: dict[str, ConfigProblem] = {}  # conf.d files that cannot be used
        self._supervisor: Supervisor | None = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()  # wakes the idle timers after any change
        self.hooks = PoolHooks(plugins, self.models, child_defaults or {}, child_options or {})
        self.events = EventHub()  # every change below is published here (SSE, metrics, logs)
        self.events.listen(LifecycleLog().on_event)
        self._load_started: dict[str, float] = {}  # by model: when its load began (load_s)
        self._restarting: set[str] = set()  # stopped for new settings, to be loaded again
        self._admitted = 0  # local requests admitted and not yet over, all models together

    def attach(
        self, supervisor: Supervisor, nursery: trio.Nursery, context: PluginContext | None = None
    ) -> None:
        """Connect the supervisor that runs children, the nursery for small chores, and
        what plugins see of the router."""
        self._supervisor = supervisor
        self._nursery = nursery
        self.hooks.attach(nursery, context)
        supervisor.on_output = self.child_output

    def _set_status(
        self, state: ModelState, new: Status, detail: str = "", **data: str | float | bool | None
    ) -> None:
        """Change ``state``'s status; tell the plugins and the hub, ``data`` added to the
        event (its fields are the contract in ``events.py``)."""
        old, state.status = state.status, new
        if old is not new:
            self.hooks.report_status(state.spec.id, old, new, detail)
            name = MODEL_STATUS if new is Status.LOADING else STATUS_CHANGE
            self.events.publish(Event(state.spec.id, name, {"status": new.value, **data}))

    def apply_catalog(
        self, specs: Mapping[str, ModelSpec], problems: Mapping[str, ConfigProblem]
    ) -> None:
        """Take a new view of the models (a rescan, a conf.d change) without restarting others.

        New models are listed; a model whose file is gone is stopped gracefully, then delisted;
        changed settings apply at once to an unloaded model, to an idle one by restarting it,
        and to a busy one when its requests are done; a file that turned invalid keeps its
        last good settings and shows the error.
        """
        self.problems = dict(problems)
        specs = self._with_sleep(specs)
        for model_id, problem in problems.items():
            if model_id in self.models:
                self.models[model_id].config_error = str(problem)
        for model_id, spec in specs.items():
            state = self.models.get(model_id)
            if state is None or state.is_retired:
                if state is None:
                    self.models[model_id] = ModelState(spec)
                else:
                    state.is_retired, state.pending_spec = False, spec
                    self._apply_pending_spec(state)
                self.events.publish(Event(model_id, MODEL_ADD))
                continue
            state.config_error = ""
            if state.status is Status.REMOTE or (spec.upstream and state.status in HOLDS_NO_CHILD):
                if spec != state.spec:  # nothing runs here: new settings apply at once
                    self._close_remote(state)
                    self.models[model_id] = ModelState(spec)
                continue
            if spec.is_pinned != (state.pending_spec or state.spec).is_pinned:
                state.pinned_at_run_time = None  # the file's new word on it wins
            if spec.is_listed != state.spec.is_listed:  # listed or not: no restart for that
                state.spec = replace(state.spec, is_listed=spec.is_listed)
            if spec != state.spec:
                state.pending_spec = spec
                self._apply_pending_spec(state)
        for model_id in [m for m in self.models if m not in specs and m not in problems]:
            if not self.models[model_id].is_retired:
                self._retire(self.models[model_id])
        self.events.publish(Event(ALL_MODELS, MODELS_RELOAD))
        self._reschedule()

    def _with_sleep(self, specs: Mapping[str, ModelSpec]) -> Mapping[str, ModelSpec]:
        """``specs`` with ``--sleep-idle-seconds`` as the ttl of the local models without one:
        llama-server's sleep is our idle ttl, so one timer rules both."""
        if self.sleep_idle_s <= 0:
            return specs
        return {
            model_id: spec
            if spec.ttl_s > 0 or spec.upstream is not None
            else replace(spec, ttl_s=self.sleep_idle_s)
            for model_id, spec in specs.items()
        }

    def _apply_pending_spec(self, state: ModelState) -> None:
        if state.pending_spec is None:
            return
        if state.status in HOLDS_NO_CHILD:
            state.spec, state.pending_spec = state.pending_spec, None
            state.failures, state.retry_at = 0, -math.inf
        elif state.status is Status.LOADED and state.in_flight == 0:
            state.restart_when_stopped = True
            self._begin_unload(state, UNLOAD_SETTINGS)

    def _retire(self, state: ModelState) -> None:
        state.is_retired = True
        state.pinned_at_run_time = None  # listed again, it starts from its file's settings
        self.events.publish(Event(state.spec.id, MODEL_REMOVE))
        gone = ModelNotFound(f"model {state.spec.id!r} was removed from the configuration")
        for waiter in [w for w in self._queue if w.model == state.spec.id]:
            self._finish(waiter, gone)
        if state.status in (*HOLDS_NO_CHILD, Status.REMOTE):
            self._close_remote(state)
            del self.models[state.spec.id]
        elif state.status in (Status.LOADED, Status.LOADING):
            self._begin_unload(state, UNLOAD_REMOVED)

    def _close_remote(self, state: ModelState) -> None:
        """Close a remote model's idle connections (ones in use close when their answer is
        done): its settings changed, or it is gone."""
        if state.status is Status.REMOTE and state.client is not None and self._nursery:
            self._nursery.start_soon(state.client.aclose)
            state.client = None

    async def run_idle_timers(self) -> None:
        """Put each model to sleep (stop its child; status ``sleeping``) once it has been idle
        for its ``ttl`` (``--sleep-idle-seconds``); runs until cancelled.

        Idle time counts from the end of the model's last request. Cancellation: returns.
        """
        while True:
            expired, next_deadline = idle_expired(
                [state.view() for state in self.models.values()], self._clock()
            )
            for model_id in expired:
                self._begin_unload(self.models[model_id], UNLOAD_IDLE)
            with trio.move_on_at(next_deadline):
                await self._changed.wait()
            self._changed = trio.Event()

    # ---- requests ----------------------------------------------------------------------------

    def resolve(self, model_id: str) -> ModelState:
        state = self.models.get(model_id)
        if state is not None and state.is_retired:
            state = None
        if state is None and model_id in self.problems:
            raise Unavailable(
                f"model {model_id!r} has an invalid configuration: {self.problems[model_id]}"
            )
        if state is None:  # aliases are the resolve_model hook's (default_plugins/aliases.py)
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {model_id!r} not found; known models: {known}")
        return state

    def waiting(self, model_id: str) -> int:
        """How many requests wait in the queue for ``model_id`` (for ``GET /models``)."""
        return sum(1 for waiter in self._queue if waiter.model == model_id)

    @asynccontextmanager
    async def lease(self, state: ModelState, *, autoload: bool) -> AsyncIterator[ChildConnections]:
        """Hold ``state``'s model loaded for the block, loading it first if needed; yield its
        client. ``state`` is what the edge resolved the request's model name to, once.

        Raises ModelNotFound (its file was deleted since), ModelNotLoaded (not loaded and
        autoload off), Unavailable (backing off after failures, or no slot freed within
        ``slot_timeout_s``: with Retry-After) or ModelLoadFailed (its load failed while we
        waited). Once its model is loading, a request waits for the load, which the load
        timeout bounds.
        Cancellation: a waiting request leaves the queue and costs no model its slot.
        """
        if state.is_retired or self.models.get(state.spec.id) is not state:
            raise ModelNotFound(f"model {state.spec.id!r} was removed from the configuration")
        if state.status is Status.REMOTE:  # served elsewhere: no queue, no slot, no load
            async with remote_lease(state, self._clock) as connections:
                yield connections
            return
        # A sleeping model wakes on a request, autoload or not, as llama-server's does.
        if state.status not in (Status.LOADED, Status.SLEEPING) and not autoload:
            raise ModelNotLoaded(
                f"model {state.spec.id!r} is {state.status.value} and autoload is off: "
                "load it with POST /models/load, or ask with ?autoload=true"
            )
        max_queue = state.spec.max_queue
        if max_queue is not None and state.status is not Status.LOADED:
            waiting = sum(1 for w in self._queue if w.model == state.spec.id)
            if waiting >= max_queue:
                raise QueueFull(
                    f"{waiting} requests already wait for model {state.spec.id!r}, which is all "
                    f"its max_queue allows; retry later"
                )
        if state.status is Status.LOADED and not self._queue:
            # The scheduler's first rule, without a round of it: a loaded model's request is
            # admitted at once, and with nobody queued that changes no other decision.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._count_admitted(state, 1)
        else:
            await self._wait_in_queue(state)
        client = state.client
        try:
            if client is None:  # it crashed between our admission and now
                raise Unavailable(f"model {state.spec.id!r} exited before the request reached it")
            yield client
        finally:
            self._count_admitted(state, -1)
            state.last_used = self._clock()
            if state.in_flight == 0:
                self._apply_pending_spec(state)
            if self._queue:
                self._reschedule()  # its model may be the one to evict now
            elif state.in_flight == 0 and state.idle_ttl_s > 0:
                self._changed.set()  # idle from now: its ttl counts from here

    async def _wait_in_queue(self, state: ModelState) -> None:
        """Queue a request for ``state``'s model until the scheduler admits it (or refuses
        it: raised), within ``slot_timeout_s`` unless its model is loading for it."""
        waiter = _Waiter(ticket=next(self._tickets), model=state.spec.id)
        self._queue.append(waiter)
        is_resumed = False
        try:
            self._reschedule()
            with trio.move_on_after(self.slot_timeout_s):
                await waiter.done.wait()
            if not waiter.done.is_set() and state.status is Status.LOADING:
                await waiter.done.wait()  # it has its slot: the load timeout bounds the rest
            if not waiter.done.is_set():
                raise self._no_slot_error(state)
            is_resumed = True
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
                self._reschedule()
            elif not is_resumed and waiter.error is None:
                # Admitted, then cancelled before it could resume: give the slot back, or the
                # model would look busy for ever and never be evicted.
                self._count_admitted(state, -1)
                self._reschedule()
        if waiter.error is not None:
            raise waiter.error

    def _count_admitted(self, state: ModelState, change: int) -> None:
        """Count a request admitted to (1) or done with (-1) ``state``'s model; tell the
        supervisor when requests start or stop running (it pauses the spares meanwhile)."""
        state.in_flight += change
        self._admitted += change
        if self._supervisor is not None and self._admitted == max(change, 0):
            self._supervisor.requests_running(self._admitted > 0)

    def request_load(
        self, state: ModelState, nursery: trio.Nursery, *, extra_args: tuple[str, ...] = ()
    ) -> None:
        """Start loading ``state``'s model in the background (``POST /models/load``).

        ``extra_args`` (already checked against the allowlist) apply from this start on;
        a model that runs with other arguments must be unloaded first (Conflict); a remote
        model is not the router's to load (InvalidRequest).
        """
        refuse_remote(state, "load")
        if state.status in HOLDS_NO_CHILD:
            state.extra_args = extra_args
        elif extra_args and extra_args != state.running_extra_args:
            raise Conflict(
                f"model {state.spec.id!r} is {state.status.value} with other arguments; "
                "unload it first (POST /models/unload)"
            )

        async def load_and_release() -> None:
            try:
                async with self.lease(state, autoload=True):
                    pass
            except ModelLoadFailed:
                pass  # the event log says why (event_log.py)
            except RouterError as exc:
                log.warning("loading %s failed: %s", state.spec.id, exc.message)
            finally:
                # No load began (no slot in time, backing off, cancelled): the client's
                # arguments must not wait for someone else's autoload.
                if state.extra_args == extra_args and state.status in HOLDS_NO_CHILD:
                    state.extra_args = ()

        nursery.start_soon(load_and_release)

    def keep_alive(self, state: ModelState, seconds: float) -> None:
        """Keep ``state``'s running child for ``seconds`` idle (Ollama's ``keep_alive``; inf:
        for ever, 0: unload it once idle) instead of its ttl, until that child exits."""
        state.keep_alive_s = seconds
        self._changed.set()  # the idle timers take the new deadline now

    def set_pinned(self, state: ModelState, pinned: bool) -> None:
        """Pin ``state``'s model (never evicted nor unloaded when idle) or unpin it, at run
        time (``POST /models/pin``): kept in memory until the router restarts or the model's
        file changes its ``pinned``. Unpinning may free the slot a queued request waits for."""
        was_pinned = state.is_pinned
        state.pinned_at_run_time = None if pinned == state.spec.is_pinned else pinned
        if state.is_pinned != was_pinned:
            self.events.publish(Event(state.spec.id, MODEL_PIN, {"pinned": state.is_pinned}))
        self._reschedule()

    def request_unload(self, state: ModelState) -> None:
        """Stop ``state``'s child gracefully (``POST /models/unload``); a sleeping model is
        unloaded at once (it has no child), so that no request wakes it any more."""
        refuse_remote(state, "unload")
        if state.status is Status.SLEEPING:
            self._set_status(state, Status.UNLOADED, reason=UNLOAD_REQUESTED)
        elif state.status in (Status.LOADED, Status.LOADING):
            self._begin_unload(state, UNLOAD_REQUESTED)

    async def stop_all(self) -> None:
        """Stop every model (the router stops): each running one is reported unloading for
        ``"shutdown"``, then the supervisor stops every child and waits for them.

        Cancellation: as ``Supervisor.stop_all``.
        """
        assert self._supervisor is not None
        for state in self.models.values():
            if state.status in (Status.LOADED, Status.LOADING):
                self._set_status(state, Status.UNLOADING, reason=UNLOAD_SHUTDOWN)
        await self._supervisor.stop_all()

    # ---- child events --------------------------------------------------------------------------

    def child_ready(self, model_id: str, address: str, pid: int) -> None:
        state = self.models[model_id]
        state.pid = pid
        if state.status is not Status.LOADING:
            return  # asked to unload while it was loading: it is being stopped
        state.client = _client_for(address)
        load_s = self._clock() - self._load_started.pop(model_id, self._clock())
        self._set_status(state, Status.LOADED, load_s=round(load_s, 3))
        state.failures, state.is_failed, state.exit_code, state.last_error = 0, False, None, ""
        state.last_used = self._clock()
        self._reschedule()

    def child_output(self, model_id: str, line: str, stream: str) -> None:
        """One line ``model_id``'s child printed: kept (``GET /models/logs``), and published
        to the streams that asked for log lines, if any does."""
        state = self.models.get(model_id)
        if state is not None:
            state.recent_lines.append(line)
        if self.events.wants_logs:
            self.events.publish(Event(model_id, LOG_LINE, {"line": line, "stream": stream}))

    def child_exited(self, model_id: str, ended: ChildExit) -> None:
        state = self.models[model_id]
        was_loading = state.status is Status.LOADING
        self._load_started.pop(model_id, None)
        is_failure = not ended.was_stopped or (not ended.was_ready and ended.exit_code != 0)
        failure: dict[str, str | float | bool | None] = {}
        if is_failure:
            failure = {"failed": True, "reason": ended.last_error, "was_loading": was_loading}
            if ended.exit_code is not None and ended.exit_code < 0:
                failure["signal"] = -ended.exit_code
        is_asleep, state.is_falling_asleep = state.is_falling_asleep and not is_failure, False
        self._set_status(
            state, Status.SLEEPING if is_asleep else Status.UNLOADED,
            f"exit code {ended.exit_code}", exit_code=ended.exit_code, **failure,
        )  # fmt: skip
        state.pid = None
        state.running_extra_args = ()
        state.keep_alive_s = None  # a client's keep_alive held for that child only
        if state.client is not None and self._nursery is not None:
            self._nursery.start_soon(state.client.aclose)
            state.client = None
        state.exit_code = ended.exit_code
        if is_failure:
            state.is_failed = True
            state.last_error = ended.last_error
            state.failure_kind = ended.failure_kind or "internal"
            state.failures += 1
            state.retry_at = self._clock() + backoff_s(state.failures)
        if was_loading:
            error = self._load_error(state)
            for waiter in [w for w in self._queue if w.model == model_id]:
                self._finish(waiter, error)
        if state.is_retired:
            del self.models[model_id]
        else:
            self._apply_pending_spec(state)
            if state.restart_when_stopped and self._nursery is not None:
                state.restart_when_stopped = False
                self._restarting.add(model_id)
                self.request_load(state, self._nursery)
        self._reschedule()

    # ---- the one place decisions are carried out ------------------------------------------------

    def _reschedule(self) -> None:
        self._changed.set()
        evicted_for: dict[str, str] = {}  # victim: the model it makes room for

        def choose_victim(candidates: Sequence[ModelView], incoming: str) -> str | None:
            victim = self.hooks.choose_victim(candidates, incoming)
            if victim is not None:
                evicted_for[victim] = incoming
            return victim

        decisions = plan(
            {model_id: state.view() for model_id, state in self.models.items()},
            [Waiting(w.ticket, w.model) for w in self._queue],
            models_max=self.models_max,
            now=self._clock(),
            choose_victim=choose_victim,
            fits=self.hooks.fits,
        )
        by_ticket = {w.ticket: w for w in self._queue}
        for ticket in decisions.admit:
            waiter = by_ticket[ticket]
            self._count_admitted(self.models[waiter.model], 1)
            self._finish(waiter, None)
        for ticket in decisions.refuse:
            waiter = by_ticket[ticket]
            self._finish(waiter, self._backoff_error(self.models[waiter.model]))
        for model_id in decisions.unload:
            for_model = evicted_for.get(model_id)
            self._begin_unload(self.models[model_id], UNLOAD_EVICTED, for_model=for_model)
        for model_id in decisions.load:
            self._begin_load(self.models[model_id])

    def _finish(self, waiter: _Waiter, error: RouterError | None) -> None:
        waiter.error = error
        self._queue.remove(waiter)
        waiter.done.set()

    def _begin_load(self, state: ModelState) -> None:
        assert self._supervisor is not None
        self._load_started[state.spec.id] = self._clock()
        # Its last run failed or crashed, or stopped for new settings: this load restarts it.
        if state.is_failed or state.spec.id in self._restarting:
            self._restarting.discard(state.spec.id)
            self._set_status(state, Status.LOADING, restart=True)
        elif state.status is Status.SLEEPING:
            self._set_status(state, Status.LOADING, wake=True)
        else:
            self._set_status(state, Status.LOADING)
        state.running_extra_args, state.extra_args = state.extra_args, ()
        state.args = self._supervisor.start(state.spec, extra_args=state.running_extra_args)

    def _begin_unload(
        self, state: ModelState, reason: str, *, for_model: str | None = None
    ) -> None:
        """Stop ``state``'s child gracefully; ``reason`` (and ``for_model``, the model an
        eviction makes room for) is the event's (``events.UNLOAD_*``)."""
        assert self._supervisor is not None and self._nursery is not None
        # Its own ttl ran out: it sleeps; a client's keep_alive (Ollama's) unloads it, as asked.
        state.is_falling_asleep = reason == UNLOAD_IDLE and state.keep_alive_s is None
        if for_model is None:
            self._set_status(state, Status.UNLOADING, reason=reason)
        else:
            self._set_status(state, Status.UNLOADING, reason=reason, **{"for": for_model})
        client, supervisor = state.client, self._supervisor
        if client is None or state.in_flight > 0:
            supervisor.stop(state.spec.id)
            return
        # Idle: close our keep-alive connections first, so the child need not wait for them.
        state.client = None

        async def close_then_stop() -> None:
            try:
                await client.aclose()
            finally:
                supervisor.stop(state.spec.id)

        self._nursery.start_soon(close_then_stop)

    def _load_error(self, state: ModelState) -> RouterError:
        reason = state.last_error or f"its process exited with code {state.exit_code}"
        return ModelLoadFailed(
            f"model {state.spec.id!r} failed to load: {reason}", kind=state.failure_kind
        )

    def _no_slot_error(self, state: ModelState) -> RouterError:
        busy = [m.spec.id for m in self.models.values() if m.status not in HOLDS_NO_CHILD]
        return Unavailable(
            f"no slot freed for model {state.spec.id!r} within {self.slot_timeout_s:g}s: "
            f"all {self.models_max} are held by models that are busy or pinned "
            f"({', '.join(sorted(busy))}); retry later",
            retry_after_s=max(1, math.ceil(self.slot_timeout_s / 4)),
        )

    def _backoff_error(self, state: ModelState) -> RouterError:
        wait_s = max(0.0, state.retry_at - self._clock())
        return Unavailable(
            f"model {state.spec.id!r} failed {state.failures} times in a row "
            f"(last: exit code {state.exit_code}: {state.last_error}); "
            f"not restarting it for another {wait_s:.0f}s"
        )


def _client_for(address: str) -> ChildConnections:
    """Keep-alive connections to a child at ``unix:/path`` or ``http://host:port``."""
    return ChildConnections(address)
