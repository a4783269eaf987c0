"""What happens to the models, said once: the events that ``/models/sse``, the metrics, the log
lines and the web page are all made from.

The pool publishes an event at each change (a status, a model added or removed, a reload);
nothing else decides what happened. Consumers come in two kinds:

* *listeners* (``EventHub.listen``) are plain functions called at once, on the Trio thread,
  in the order they were added: counters and log lines, which must never wait;
* *subscribers* (``EventHub.subscribe``) are streams, one bounded buffer each, read at their own
  pace: an SSE client. A subscriber that falls ``backlog`` events behind is cut off rather than
  let the router's memory grow for a reader that has stopped; it reconnects and reads
  ``GET /models`` again, as a llama.cpp router client does after any disconnect.

The names and shapes are llama.cpp's router's (``server-models.cpp``, ``notify_sse``):
``{"model": ID, "event": NAME, "data": {...}}``, with ``model_status`` when a load starts,
``status_change`` for every later change (``exit_code`` on ``unloaded``), ``model_remove``,
``models_reload`` (``model`` is ``"*"``), ``download_*``. Ours add fields, never rename them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

log = logging.getLogger("router.models.events")

# Event names, llama.cpp's where it has one.
MODEL_STATUS = "model_status"  # a load starts: {"status": "loading"}
STATUS_CHANGE = "status_change"  # any later status: {"status": ..., ...}
MODEL_ADD = "model_add"  # ours: a model was listed (a new file in --models-dir or conf.d)
MODEL_REMOVE = "model_remove"  # a model was delisted
MODELS_RELOAD = "models_reload"  # the list was read again; model is "*"
LOG_LINE = "log"  # ours, only to subscribers that asked: {"line": ...} from a child's output


@dataclass(frozen=True)
class Event:
    """One thing that happened to one model (``model`` is ``"*"`` for all of them)."""

    model: str
    event: str
    data: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The SSE payload, in llama.cpp's shape: ``data`` only when there is some."""
        body: dict[str, Any] = {"model": self.model, "event": self.event}
        if self.data is not None:
            body["data"] = dict(self.data)
        return body


@dataclass
class _Subscriber:
    send: trio.MemorySendChannel[Event]
    wants_logs: bool
    models: frozenset[str] | None  # None: every model


@dataclass
class EventHub:
    """Fans each event out to listeners (at once) and subscribers (buffered, bounded)."""

    backlog: int = 256
    _listeners: list[Callable[[Event], None]] = field(default_factory=list)
    _subscribers: list[_Subscriber] = field(default_factory=list)

    def listen(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` for every event but log lines, synchronously. It must be
        quick and must not raise; if it does, the error is logged and the others still run."""
        self._listeners.append(callback)

    def publish(self, event: Event) -> None:
        """Tell everyone; never blocks, never raises."""
        if event.event != LOG_LINE:
            for callback in self._listeners:
                try:
                    callback(event)
                except Exception:
                    log.exception("an event listener failed on %s", event)
        for subscriber in list(self._subscribers):
            if event.event == LOG_LINE and not subscriber.wants_logs:
                continue
            models = subscriber.models
            if models is not None and event.model not in models and event.model != "*":
                continue
            try:
                subscriber.send.send_nowait(event)
            except trio.WouldBlock:
                log.warning("an event stream fell %d events behind: closing it", self.backlog)
                self._drop(subscriber)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(subscriber)

    @property
    def wants_logs(self) -> bool:
        """Whether anyone reads log lines now (so a child's output is not published for no one)."""
        return any(s.wants_logs for s in self._subscribers)

    @contextmanager
    def subscribe(
        self, *, logs: bool = False, models: frozenset[str] | None = None
    ) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        """A stream of the events from now on, for as long as the ``with`` block lasts.

        The stream ends (``async for`` stops) if the reader falls ``backlog`` events behind.
        """
        send, receive = trio.open_memory_channel[Event](self.backlog)
        subscriber = _Subscriber(send, logs, models)
        self._subscribers.append(subscriber)
        try:
            with receive:
                yield receive
        finally:
            self._drop(subscriber)

    def _drop(self, subscriber: _Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        subscriber.send.close()
