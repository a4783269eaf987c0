"""Notice changes to the conf.d folder, with watchfiles (inotify, through anyio on Trio).

Where inotify cannot watch the folder (its limits reached, a file system without it),
watchfiles polls it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio
from watchfiles import awatch

log = logging.getLogger("router.models.watch")

DEBOUNCE_MS = 200
RUST_TIMEOUT_MS = 1000  # the longest a cancelled watch waits for its thread


class ConfDirWatcher:
    """Watches a conf.d folder until ``stop()``; see :meth:`run`."""

    def __init__(self, folder: Path, on_change: Callable[[], None]) -> None:
        self.folder = folder
        self.on_change = on_change
        # watchfiles waits on a thread; cancelling it alone would wait for that thread's
        # timeout (a second). Setting this event first ends the thread within a step.
        self._stop = anyio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, force_polling: bool | None = None) -> None:
        """Call ``on_change()`` after ``*.toml`` files are added, changed or removed.

        Bursts of events (an editor's save, a package install) are folded into one call. Where
        inotify fails, polls the folder; where that fails too (the folder is gone), logs why
        and returns: a SIGHUP or ``POST /models/reload`` still reloads. ``force_polling=None``
        lets watchfiles choose (it polls when ``WATCHFILES_FORCE_POLLING`` is set).

        Returns soon after ``stop()``. Cancellation: stops watching and returns, after up to
        a second if ``stop()`` was not called first.
        """
        try:
            await self._watch(force_polling)
        except (OSError, RuntimeError) as exc:
            if force_polling:
                log.warning(
                    "cannot watch %s (%s); SIGHUP or POST /models/reload reloads it",
                    self.folder,
                    exc,
                )
                return
            log.warning("cannot watch %s with inotify (%s); polling it", self.folder, exc)
            await self.run(force_polling=True)

    async def _watch(self, force_polling: bool | None) -> None:
        async for _ in awatch(
            self.folder,
            debounce=DEBOUNCE_MS,
            recursive=False,
            watch_filter=lambda _change, path: path.endswith(".toml"),
            stop_event=self._stop,
            rust_timeout=RUST_TIMEOUT_MS,
            force_polling=force_polling,
        ):
            self.on_change()
