"""The ASGI lifespan protocol, server side: the app's startup before serving, its shutdown
after (Quart-Trio runs its ``before_serving``/``after_serving`` functions, and owns the nursery
of its background tasks, there)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config

log = logging.getLogger("router.edge.asgi_lifespan")

Message = dict[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class LifespanFailed(RuntimeError):
    """The app refused to start (``lifespan.startup.failed``) or took too long."""


class Lifespan:
    """The ASGI lifespan protocol: the app's startup before serving, its shutdown after. An
    app that does not speak it (raises at once) is served without."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self._app = app
        self._config = config
        self.state: dict[str, Any] = {}
        self._to_app, self._app_inbox = trio.open_memory_channel[Message](1)
        self._started = trio.Event()
        self._stopped = trio.Event()
        self._failure: str | None = None
        self._is_supported = True

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app's lifespan; it ends when the app returns, or its nursery is cancelled."""
        scope: Message = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        task_status.started()
        try:
            await self._app(scope, self._app_inbox.receive, self._from_app)
        except Exception as exc:
            if self._started.is_set():
                log.exception("the app's lifespan failed")
            else:
                log.info("the app has no lifespan (%s): serving without", exc)
                self._is_supported = False
        finally:
            self._started.set()
            self._stopped.set()

    async def _from_app(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            self._failure = message.get("message", "")
        if kind.startswith("lifespan.startup."):
            self._started.set()
        elif kind.startswith("lifespan.shutdown."):
            self._stopped.set()
        await trio.lowlevel.checkpoint()

    async def startup(self) -> str | None:
        """Ask the app to start; None once it has, else why it has not (it refused, or took
        longer than ``config.startup_timeout``)."""
        await self._to_app.send({"type": "lifespan.startup"})
        with trio.move_on_after(self._config.startup_timeout) as waiting:
            await self._started.wait()
        if waiting.cancelled_caught:
            return f"the app did not start in {self._config.startup_timeout} s"
        if self._failure is not None:
            return f"the app failed to start: {self._failure}"
        return None

    async def shutdown(self) -> None:
        """Ask the app to stop, and wait (up to ``config.shutdown_timeout``) until it has."""
        if not self._is_supported or self._stopped.is_set():
            return
        await self._to_app.send({"type": "lifespan.shutdown"})
        with trio.move_on_after(self._config.shutdown_timeout):
            await self._stopped.wait()
        if self._failure is not None:
            log.error("the app failed to stop: %s", self._failure)
