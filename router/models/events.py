"""What happens to the models, said once: the events that ``/models/sse``, the metrics, the log
lines and the web page are all made from.

The pool publishes an event at each change (a status, a model added or removed, a reload);
nothing else decides what happened. Consumers come in two kinds:

* *listeners* (``EventHub.listen``) are plain functions called at once, on the Trio thread,
  in the order they were added: counters and log lines, which must never wait;
* *subscribers* (``EventHub.subscribe``) are streams, one bounded buffer each, read at their own
  pace: an SSE client. A subscriber that falls ``backlog`` events behind is cut off rather than
  let the router's memory grow for a reader that has stopped; it reconnects and reads
  ``GET /models`` again, as a llama.cpp router client does after any disconnect. When the
  router stops, ``close`` ends every stream (an SSE client must not hold the shutdown).

The names and shapes are llama.cpp's router's (``server-models.cpp``, ``notify_sse``):
``{"model": ID, "event": NAME, "data": {...}}``. Ours add fields, never rename them.

The contract (other code and other programs read exactly these names):

* ``model_status`` ``{"status": "loading"}``: a load starts; ``"restart": true`` when the
  model's previous run failed or crashed (the load that follows a crash), or stopped for new
  settings; ``"wake": true`` when a request wakes a sleeping model.
* ``status_change`` for every later status:

  - ``{"status": "loaded", "load_s": 1.23}``: seconds from loading to loaded;
  - ``{"status": "unloading", "reason": R}``, R one of ``"requested"`` (``POST
    /models/unload``), ``"idle"`` (its ttl ran out: it falls asleep), ``"evicted"`` (with
    ``"for": OTHER_ID``, the model it makes room for), ``"settings"`` (its settings changed: it
    restarts),
    ``"shutdown"`` (the router stops), ``"removed"`` (its file or conf.d entry is gone);
  - ``{"status": "unloaded", "exit_code": N}`` (None if it never started); when the child
    failed or crashed also ``"failed": true``, ``"reason": "plain words"`` (``"killed by
    signal 9 (SIGKILL)"``, the child's last error line...), ``"signal": N`` when a signal
    killed it, and ``"was_loading": bool`` (it failed to load, rather than crashed);
  - ``{"status": "sleeping", "exit_code": 0}``: stopped after its own ttl
    (``--sleep-idle-seconds``), as llama-server's ``sleeping``; the next request wakes it
    (``"wake": true``), autoload or not; ``POST /models/unload`` makes it ``unloaded``, and so
    does a client's ``keep_alive`` running out (Ollama's word is unload).

* ``model_pin`` ``{"pinned": bool}`` (ours): the model was pinned or unpinned at run time
  (``POST /models/pin``); a pinned model is never evicted nor unloaded when idle.
* ``model_add`` / ``model_remove`` (no data): a rescan listed a new model, or delisted one.
* ``models_reload`` (``model`` is ``"*"``, no data): after each rescan of the model list.
* ``download_progress`` ``{"progress": {URL: {"done": BYTES, "total": BYTES}}}``: a download
  into the model cache (``POST /models``) goes on, one entry per file (``downloads.py``); then
  ``download_finished`` (no data) and the model is listed (``model_add``), or
  ``download_failed`` ``{"reason": "plain words"}`` (``"cancelled"`` after ``POST
  /models/unload``). ``model`` is the id the model is listed by, ``ORG/REPO:TAG``.
* ``log`` ``{"line": ..., "stream": "stderr"}`` (ours): one line a child printed, only to
  subscribers that asked for log lines, and published only while one listens.
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
MODEL_PIN = "model_pin"  # ours: pinned or unpinned at run time: {"pinned": bool}
MODEL_ADD = "model_add"  # ours: a model was listed (a new file in --models-dir or conf.d)
MODEL_REMOVE = "model_remove"  # a model was delisted
MODELS_RELOAD = "models_reload"  # the list was read again; model is "*"
DOWNLOAD_PROGRESS = "download_progress"  # {"progress": {url: {"done": n, "total": n}}}
DOWNLOAD_FINISHED = "download_finished"
DOWNLOAD_FAILED = "download_failed"  # {"reason": ...}
LOG_LINE = "log"  # ours, only to subscribers that asked: {"line": ..., "stream": ...}
ALL_MODELS = "*"  # the ``model`` of an event about every model (``models_reload``)

# Why a model is unloading (``status_change`` to ``unloading``: ``"reason"``).
UNLOAD_REQUESTED = "requested"
UNLOAD_IDLE = "idle"
UNLOAD_EVICTED = "evicted"  # with "for": the model it makes room for
UNLOAD_SETTINGS = "settings"
UNLOAD_SHUTDOWN = "shutdown"
UNLOAD_REMOVED = "removed"


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
    is_closed: bool = False  # the router stops: every stream has ended, new ones end at once

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
            if models is not None and event.model not in models and event.model != ALL_MODELS:
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

        The stream ends (``async for`` stops) if the reader falls ``backlog`` events behind,
        and when the hub closes (at once if it already has).
        """
        send, receive = trio.open_memory_channel[Event](self.backlog)
        subscriber = _Subscriber(send, logs, models)
        if self.is_closed:
            send.close()
        else:
            self._subscribers.append(subscriber)
        try:
            with receive:
                yield receive
        finally:
            self._drop(subscriber)

    def close(self) -> None:
        """End every stream, now and from now on (the router stops); listeners still hear
        what follows (the models' unloading)."""
        self.is_closed = True
        for subscriber in list(self._subscribers):
            self._drop(subscriber)

    def _drop(self, subscriber: _Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        subscriber.send.close()
