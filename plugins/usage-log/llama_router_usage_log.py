"""One JSON line per proxied request, appended to a file that is rotated by size.

``LLAMA_ROUTER_USAGE_LOG=/var/log/llama-router/usage.jsonl`` turns it on;
``LLAMA_ROUTER_USAGE_LOG_MAX_BYTES`` (default 10 MB) is the size past which the file becomes
``usage.jsonl.1`` (the older ``.1`` becoming ``.2``, up to ``LLAMA_ROUTER_USAGE_LOG_BACKUPS``,
default 5). Each line: ``time``, ``principal``, ``model``, ``prompt_tokens``,
``completion_tokens``, ``total_tokens``, ``latency_s``, ``status``. The tokens are those the
router read from the answer (null for an error); a stream sent without
``stream_options.include_usage`` has its completion tokens counted, and ``prompt_tokens`` 0
unless the backend says (llama-server's ``timings``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import trio

from router import Principal, Usage, hookimpl

_lock = trio.Lock()


def write_line(path: Path, line: str, *, max_bytes: int, backups: int) -> None:
    """Append ``line``, rotating first if the file would grow past ``max_bytes``."""
    if path.exists() and path.stat().st_size + len(line) > max_bytes:
        for index in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(line)


@hookimpl
async def request_finished(
    model: str, principal: Principal, usage: Usage | None, duration_s: float, status: int
) -> None:
    target = os.environ.get("LLAMA_ROUTER_USAGE_LOG")
    if not target:
        return
    record = {
        "time": time.time(),
        "principal": principal.name,
        "model": model,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "latency_s": round(duration_s, 6),
        "status": status,
    }
    line = json.dumps(record) + "\n"
    max_bytes = int(os.environ.get("LLAMA_ROUTER_USAGE_LOG_MAX_BYTES", 10 * 1024 * 1024))
    backups = int(os.environ.get("LLAMA_ROUTER_USAGE_LOG_BACKUPS", 5))
    async with _lock:  # one writer at a time, off the event loop
        await trio.to_thread.run_sync(
            lambda: write_line(Path(target), line, max_bytes=max_bytes, backups=backups)
        )
