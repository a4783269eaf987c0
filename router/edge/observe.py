"""One request, observed from its first byte to its last: what the access log and the metrics
are made of, on both paths (the raw fast path and Quart), through one ASGI wrapper.

``observed(app, report)`` wraps the router's whole ASGI app: it opens a ``RequestRecord`` for
each HTTP request, notes the status the answer starts with (and an error's OpenAI ``type``),
and hands the record to ``report`` once the request is over, early refusals (401, 404, 413)
included (not the server's own answers to a head it cannot parse: 400, 414, 431, which no app
sees). What only deeper code knows is noted into the record that a context variable holds
(a task started for the request inherits it): the model the gate resolved (``note_model``),
and the forward to a child (``forward_began``, ``forward_admitted``, ``forward_ended``):
whether it waited for a load or a slot, how long it queued, the tokens its answer used.

A forward on the Quart path runs in a task of its own, which may end after the answer's last
byte has left: the record is reported when both are done, whichever ends last.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from router.edge.asgi_lifespan import ASGIApp, Message
from router.edge.raw_asgi import Receive, Send
from router.hooks.plugin_types import Usage
from router.models.pool import ModelPool
from router.models.scheduler import HOLDS_A_SLOT, HOLDS_NO_CHILD, NEEDS_NO_LOAD
from router.models.state import ModelState

log = logging.getLogger("router.edge.observe")

AGENT_CHARS = 200  # the most of a User-Agent header a record keeps
ERROR_BODY_BYTES = 4096  # an error body longer than this is not read for its type
CLIENT_LEFT = 499  # nginx's status for a request whose client left before the answer


@dataclass
class RequestRecord:
    """What one request did; filled in as it passes, reported once, when it is over."""

    method: str
    path: str  # as the client sent it, %-escapes and query kept: hostile, escape to print
    client: str
    agent: str = ""  # the User-Agent header (a client's text), cut to AGENT_CHARS
    started_at: float = field(default_factory=time.time)  # wall clock, for the log line
    started: float = field(default_factory=time.monotonic)
    requested_model: str = ""  # the name the request gave (a client's text)
    model: str = ""  # the listed model it resolved to; "" for none
    status: int = 0
    error_type: str = ""  # an error answer's OpenAI error.type, as its body says
    is_cut: bool = False  # the answer began, then broke off
    usage: Usage | None = None
    waited_for_load: bool = False
    waited_for_slot: bool = False
    queue_wait_s: float = 0.0  # from asking the pool for the model to being admitted
    upstream_s: float = 0.0  # from admission to the forward's end (the child's share)
    duration_s: float = 0.0  # the whole request, as the router saw it
    _report: Callable[[RequestRecord], None] | None = None
    _open_parts: int = 1  # the app's call; a forward on its own task adds one
    _forward_started: float = 0.0
    _admitted: float = 0.0
    _error_head: bytes = b""

    @property
    def was_forwarded(self) -> bool:
        """Whether the request went (or was to go) to a model's child."""
        return self._forward_started != 0.0

    @property
    def router_s(self) -> float:
        """The router's own share of the time: neither queueing nor the child's work."""
        return max(0.0, self.duration_s - self.queue_wait_s - self.upstream_s)

    def _part_done(self) -> None:
        self._open_parts -= 1
        if self._open_parts == 0 and self._report is not None:
            self.duration_s = time.monotonic() - self.started
            report, self._report = self._report, None
            try:
                report(self)
            except Exception:  # a report must never cost a client its answer
                log.exception("reporting a request failed")

    def _note_error_body(self, chunk: bytes) -> None:
        """Read ``error.type`` from the start of an OpenAI error body."""
        if self.error_type or len(self._error_head) >= ERROR_BODY_BYTES:
            return
        self._error_head += chunk[: ERROR_BODY_BYTES - len(self._error_head)]
        try:
            payload = json.loads(self._error_head)
        except (ValueError, RecursionError):
            return  # not (yet) a whole JSON document
        error = payload.get("error") if isinstance(payload, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        self.error_type = kind if isinstance(kind, str) else ""


_current: ContextVar[RequestRecord | None] = ContextVar("llama_router_request", default=None)


def observed(app: ASGIApp, report: Callable[[RequestRecord], None]) -> ASGIApp:
    """``app``, with ``report(record)`` called once each HTTP request is over.

    ``report`` runs on the Trio thread and must not wait; what it raises is logged.
    """

    async def serve(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        record = _record_for(scope)
        record._report = report

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            elif record.status >= 400 and message["type"] == "http.response.body":
                record._note_error_body(message.get("body", b""))
            await send(message)

        token = _current.set(record)
        try:
            await app(scope, receive, send_noting)
        except BaseException as error:
            if record.status:
                record.is_cut = True
            else:  # the server answers a bug with a 500; a cancelled request gets nothing
                record.status = 500 if isinstance(error, Exception) else CLIENT_LEFT
            raise
        finally:
            _current.reset(token)
            record._part_done()

    return serve


def _record_for(scope: Message) -> RequestRecord:
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(scope["path"])
    query = scope.get("query_string") or b""
    if query:
        path += "?" + query.decode("latin-1")
    client = scope.get("client")
    agent = next((value for name, value in scope["headers"] if name.lower() == b"user-agent"), b"")
    return RequestRecord(
        method=str(scope["method"]),
        path=path,
        client=str(client[0]) if client else "",
        agent=agent.decode("utf-8", "replace")[:AGENT_CHARS],
    )


def current() -> RequestRecord | None:
    """The record of the request this task serves, if it is an observed one."""
    return _current.get()


def note_requested(requested: str) -> None:
    """The model name the request gave (before any plugin routed it)."""
    record = _current.get()
    if record is not None:
        record.requested_model = requested


def note_model(model_id: str) -> None:
    """The listed model the request was resolved to."""
    record = _current.get()
    if record is not None:
        record.model = model_id


def forward_began(pool: ModelPool, state: ModelState) -> RequestRecord | None:
    """A forward to ``state``'s model starts (before the pool's lease): note whether it must
    wait for a load, and for a slot (``--models-max``) to load in. The forward's part of the
    request stays open until ``forward_ended``."""
    record = _current.get()
    if record is None:
        return None
    record._open_parts += 1
    record._forward_started = time.monotonic()
    record.model = state.spec.id
    record.waited_for_load = state.status not in NEEDS_NO_LOAD
    if state.status in HOLDS_NO_CHILD and pool.models_max > 0:
        holding = sum(1 for other in pool.models.values() if other.status in HOLDS_A_SLOT)
        record.waited_for_slot = holding >= pool.models_max
    return record


def forward_admitted() -> None:
    """The pool admitted the forward: its model is loaded and it holds a lease."""
    record = _current.get()
    if record is not None and record._forward_started and not record._admitted:
        record._admitted = time.monotonic()
        record.queue_wait_s = record._admitted - record._forward_started


def forward_ended(record: RequestRecord, usage: Usage | None) -> None:
    """The forward is over (answered, refused or cut); ``usage`` is its answer's tokens.

    A forward never admitted (its load failed, no slot freed in time) queued all along."""
    now = time.monotonic()
    record.usage = usage
    if record._admitted:
        record.upstream_s = now - record._admitted
    else:
        record.queue_wait_s = now - record._forward_started
    record._part_done()
