"""The router's log lines about its models' lives, made from the events (``events.py``) and
nowhere else: a load and how long it took, an unload and why (the model an eviction made room
for), a crash in plain words ("killed by signal 9 (SIGKILL)"), not the child's last line.

One listener on the pool's hub (``LifecycleLog.on_event``), so each fact is said once, in one
place, in the same words the events carry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.models.events import (
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
)

log = logging.getLogger("router.models")

# What follows "unloading model X" for each reason but an eviction (which names its model).
_UNLOAD_WHY = {
    UNLOAD_REQUESTED: "as asked",
    UNLOAD_IDLE: "idle for its ttl, it sleeps",
    UNLOAD_SETTINGS: "new settings, restarting it",
    UNLOAD_SHUTDOWN: "the router is stopping",
    UNLOAD_REMOVED: "removed from the configuration",
}


@dataclass
class LifecycleLog:
    """Logs each event as one line a person can read. The first listing of the models is the
    server's own line ("models: a, b"), so models added before the first reload are not
    logged one by one."""

    has_listed: bool = False

    def on_event(self, event: Event) -> None:
        data = event.data or {}
        model = event.model
        if event.event == MODELS_RELOAD:
            self.has_listed = True
        elif event.event in (MODEL_ADD, MODEL_REMOVE):
            if self.has_listed:
                log.info("model %s %s", model, "added" if event.event == MODEL_ADD else "removed")
        elif event.event == MODEL_PIN:
            how = "pinned" if data.get("pinned") else "unpinned"
            log.info("model %s %s until the router restarts", model, how)
        elif event.event == MODEL_STATUS:
            why = " (a restart)" if data.get("restart") else " (waking)" if data.get("wake") else ""
            log.info("loading model %s%s", model, why)
        elif event.event == STATUS_CHANGE:
            self._status_change(model, data)

    @staticmethod
    def _status_change(model: str, data: Mapping[str, Any]) -> None:
        status = data.get("status")
        if status == "loaded":
            log.info("model %s loaded in %.2f s", model, data.get("load_s", 0.0))
        elif status == "unloading":
            reason = data.get("reason")
            if reason == UNLOAD_EVICTED:
                log.info("unloading model %s to make room for %s", model, data.get("for"))
            else:
                log.info("unloading model %s: %s", model, _UNLOAD_WHY.get(str(reason), reason))
        elif status == "unloaded":
            if data.get("failed"):
                what = "failed to load" if data.get("was_loading") else "crashed"
                log.warning("model %s %s: %s", model, what, data.get("reason"))
            else:
                log.info("model %s unloaded", model)
        elif status == "sleeping":
            log.info("model %s sleeps until its next request", model)
