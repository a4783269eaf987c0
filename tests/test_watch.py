"""The conf.d watcher: it reports changes, and stop() ends it without a cancellation."""

from __future__ import annotations

from pathlib import Path

import trio

from router.watch import ConfDirWatcher


async def test_a_new_file_is_reported_and_stop_ends_the_watch(tmp_path: Path) -> None:
    changes: list[int] = []
    seen = trio.Event()

    def on_change() -> None:
        changes.append(1)
        seen.set()

    watcher = ConfDirWatcher(tmp_path, on_change)
    with trio.fail_after(30):  # a hang guard, not a timing assertion
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            await trio.sleep(0.3)  # let the watcher start before the file appears
            (tmp_path / "new.toml").write_text('model = "x.gguf"\n')
            await seen.wait()
            watcher.stop()  # run() returns by itself: the nursery closes without a cancel
    assert changes
