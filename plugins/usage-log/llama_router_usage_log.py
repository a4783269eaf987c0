"""One JSON line per proxied request, appended to a file that is rotated by size.

``LLAMA_ROUTER_USAGE_LOG=/var/log/llama-router/usage.jsonl`` turns it on;
``LLAMA_ROUTER_USAGE_LOG_MAX_BYTES`` (default 10 MB; 0: never rotate) is the size past which
the file becomes ``usage.jsonl.1`` (the older ``.1`` becoming ``.2``, up to
``LLAMA_ROUTER_USAGE_LOG_BACKUPS``, default 5, at least 1). The three are read when the router
starts. Each line: ``time``, ``principal``, ``model``, ``prompt_tokens``,
``completion_tokens``, ``total_tokens``, ``latency_s``, ``status``. The tokens are those the
router read from the answer (null for an error); a stream sent without
``stream_options.include_usage`` has its completion tokens counted, and ``prompt_tokens`` 0
unless the backend says (llama-server's ``timings``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

import trio

from router import Principal, Usage, hookimpl

_usage_log: UsageLog | None = None
_one_writer = trio.CapacityLimiter(1)  # the handler's lock would only keep more threads idle


class UsageLog:
    """The usage file: lines appended and rotated by logging's ``RotatingFileHandler``."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"LLAMA_ROUTER_USAGE_LOG_MAX_BYTES must be 0 or more, not {max_bytes}")
        if backups < 1:
            # RotatingFileHandler with no backups never rotates: the file would grow forever.
            raise ValueError(f"LLAMA_ROUTER_USAGE_LOG_BACKUPS must be 1 or more, not {backups}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )

    def write(self, line: str) -> None:
        """Append ``line`` and a newline, rotating first if the file would grow past its size.

        Blocks on the disk. An error writing is reported on stderr by ``logging``.
        """
        self._handler.handle(logging.makeLogRecord({"msg": line}))

    def close(self) -> None:
        self._handler.close()


def _setting(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


@hookimpl
def startup() -> None:
    global _usage_log
    target = os.environ.get("LLAMA_ROUTER_USAGE_LOG")
    if target:
        _usage_log = UsageLog(
            Path(target),
            max_bytes=_setting("LLAMA_ROUTER_USAGE_LOG_MAX_BYTES", 10 * 1024 * 1024),
            backups=_setting("LLAMA_ROUTER_USAGE_LOG_BACKUPS", 5),
        )


@hookimpl
def shutdown() -> None:
    global _usage_log
    if _usage_log is not None:
        _usage_log.close()
        _usage_log = None


@hookimpl
async def request_finished(
    model: str, principal: Principal, usage: Usage | None, duration_s: float, status: int
) -> None:
    usage_log = _usage_log
    if usage_log is None:
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
    await trio.to_thread.run_sync(usage_log.write, json.dumps(record), limiter=_one_writer)
