"""The conf.d watcher: it reports changes, and stop() ends it without a cancellation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from router.models.watch import ConfDirWatcher


@pytest.mark.parametrize("force_polling", [None, True], ids=["inotify", "polling"])
async def test_a_new_file_is_reported_and_stop_ends_the_watch(
    tmp_path: Path, force_polling: bool | None
) -> None:
    changes: list[int] = []
    seen = trio.Event()

    def on_change() -> None:
        changes.append(1)
        seen.set()

    watcher = ConfDirWatcher(tmp_path, on_change)
    with trio.fail_after(30):  # a hang guard, not a timing assertion
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watcher.run(force_polling=force_polling))
            # A file written before the watch began goes unseen: write until one is seen.
            for number in range(1000):
                (tmp_path / f"new-{number}.toml").write_text('model = "x.gguf"\n')
                with trio.move_on_after(0.5):
                    await seen.wait()
                if seen.is_set():
                    break
            watcher.stop()  # run() returns by itself: the nursery closes without a cancel
    assert changes


async def test_a_folder_that_cannot_be_watched_ends_the_watch_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = ConfDirWatcher(tmp_path / "gone", lambda: None)
    with caplog.at_level(logging.WARNING, logger="router.models.watch"), trio.fail_after(30):
        await watcher.run()  # returns: it does not poll a missing folder forever
    assert "SIGHUP or POST /models/reload reloads it" in caplog.text
