"""Notice changes to the conf.d folder: watchfiles (inotify, through anyio on Trio), or a
poll of the folder's listing where no watcher works."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("router.watch")

POLL_INTERVAL_S = 0.5
DEBOUNCE_MS = 200
RUST_TIMEOUT_MS = 1000  # the longest a cancelled watch waits for its thread


class ConfDirWatcher:
    """Watches a conf.d folder until ``stop()``; see :meth:`run`."""

    def __init__(self, folder: Path, on_change: Callable[[], None]) -> None:
        self.folder = folder
        self.on_change = on_change
        import anyio

        # watchfiles waits on a thread; cancelling it alone would wait for that thread's
        # timeout (seconds). Setting this event first ends the thread within a step.
        self._stop = anyio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Call ``on_change()`` after ``*.toml`` files are added, changed or removed.

        Bursts of events (an editor's save, a package install) are folded into one call.
        Returns soon after ``stop()``. Cancellation: stops watching and returns, after up to
        a second if ``stop()`` was not called first.
        """
        await watch_conf_dir(self.folder, self.on_change, stop_event=self._stop)


async def watch_conf_dir(
    folder: Path, on_change: Callable[[], None], *, stop_event: Any = None
) -> None:
    """Call ``on_change()`` after ``*.toml`` files in ``folder`` were added, changed or removed.

    Bursts of events (an editor's save, a package install) are folded into one call.
    Cancellation: stops watching and returns.
    """
    try:
        from watchfiles import awatch
    except ImportError:  # pragma: no cover - watchfiles is a dependency; this is a safety net
        await _poll(folder, on_change)
        return
    try:
        async for _ in awatch(
            folder,
            debounce=DEBOUNCE_MS,
            recursive=False,
            watch_filter=lambda _change, path: path.endswith(".toml"),
            stop_event=stop_event,
            rust_timeout=RUST_TIMEOUT_MS,
        ):
            on_change()
    except (OSError, RuntimeError) as exc:
        log.warning("cannot watch %s (%s); polling it every %gs", folder, exc, POLL_INTERVAL_S)
        await _poll(folder, on_change)


async def _poll(folder: Path, on_change: Callable[[], None]) -> None:
    seen = _listing(folder)
    while True:
        await trio.sleep(POLL_INTERVAL_S)
        now = _listing(folder)
        if now != seen:
            seen = now
            on_change()


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    listing = {}
    for path in folder.glob("*.toml"):
        try:
            stat = path.stat()
        except OSError:
            continue
        listing[path.name] = (stat.st_mtime_ns, stat.st_size)
    return listing
