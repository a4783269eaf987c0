"""API keys from a TOML file, each with the models it may use and its limits.

Set ``LLAMA_ROUTER_APIKEYS_FILE`` to a file like::

    [[key]]
    name = "alice"
    sha256 = "9f86d0..."            # sha256 of the key, hex: keys are never stored in clear
    models = ["gemma*", "qwen-*"]    # globs; default: every model
    requests_per_minute = 60         # default: no limit
    tokens_per_day = 200000          # prompt + completion tokens, UTC day; default: no limit
    admin = false                    # may change model configs (the config API)

The file is read again whenever it changes. Without the variable the plugin does nothing.
Keys are compared by hashing the offered key and comparing with every stored hash in constant
time. Past a limit a request gets 429 with Retry-After.

Tokens are charged when an answer ends, as the router counted them (``router.edge.usage``): the
answer's own ``usage`` from any backend, streamed or not; for a stream without it (no
``stream_options.include_usage``), its completion tokens. A request that starts under the limit
runs to its end, so a key can go past its limit by one answer (or by its requests in flight).
"""

from __future__ import annotations

import collections
import datetime
import fnmatch
import hashlib
import hmac
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from router import Denial, Principal, RequestInfo, Usage, hookimpl

ENV_VAR = "LLAMA_ROUTER_APIKEYS_FILE"


@dataclass(frozen=True)
class Key:
    name: str
    sha256: bytes
    models: tuple[str, ...] = ("*",)
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    is_admin: bool = False


class KeyStore:
    """The keys file, re-read when its modification time changes, and each key's usage."""

    def __init__(self, path: Path, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.path = path
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._keys: list[Key] = []
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._tokens: dict[tuple[str, str], int] = collections.defaultdict(int)

    def keys(self) -> list[Key]:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._keys = _read_keys(self.path)
            self._stamp = stamp
        return self._keys

    def find(self, offered: str) -> Key | None:
        digest = hashlib.sha256(offered.encode()).digest()
        found = None
        for key in self.keys():  # every key, always: the time says nothing about a near miss
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    def check_rate(self, key: Key) -> Denial | None:
        now = self._clock()
        if (
            key.tokens_per_day is not None
            and self._tokens[(key.name, _day(now))] >= key.tokens_per_day
        ):
            return Denial(
                f"key {key.name!r} has used its {key.tokens_per_day} tokens for today",
                status=429,
                retry_after_s=_seconds_to_midnight(now),
            )
        if key.requests_per_minute is None:
            return None
        recent = self._recent[key.name]
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= key.requests_per_minute:
            wait = max(1, math.ceil(recent[0] + 60 - now))
            return Denial(
                f"key {key.name!r} may make {key.requests_per_minute} requests a minute",
                status=429,
                retry_after_s=wait,
            )
        recent.append(now)
        return None

    def add_tokens(self, name: str, tokens: int) -> None:
        today = _day(self._clock())
        for past in [entry for entry in self._tokens if entry[1] != today]:
            del self._tokens[past]  # only today's count matters: keep the map small
        self._tokens[(name, today)] += tokens


def _read_keys(path: Path) -> list[Key]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    keys = []
    for entry in data.get("key", []):
        keys.append(
            Key(
                name=str(entry["name"]),
                sha256=bytes.fromhex(entry["sha256"]),
                models=tuple(entry.get("models", ["*"])),
                requests_per_minute=entry.get("requests_per_minute"),
                tokens_per_day=entry.get("tokens_per_day"),
                is_admin=bool(entry.get("admin", False)),
            )
        )
    return keys


def _day(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d")


def _seconds_to_midnight(now: float) -> int:
    return max(1, math.ceil(86400 - now % 86400))


_store: KeyStore | None = None


def store() -> KeyStore | None:
    """The store for ``LLAMA_ROUTER_APIKEYS_FILE``, or None when it is not set."""
    global _store
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    if _store is None or _store.path != Path(path):
        _store = KeyStore(Path(path))
    return _store


@hookimpl
def authenticate(request: RequestInfo) -> Principal | Denial | None:
    keys = store()
    if keys is None:
        return None
    key = keys.find(request.bearer_token())
    if key is None:
        return Denial("unknown API key: send 'Authorization: Bearer KEY'", status=401)
    return Principal(name=key.name, is_admin=key.is_admin, details={"apikeys": key})


@hookimpl
def authorize(principal: Principal, model: str) -> Denial | None:
    keys = store()
    key = principal.details.get("apikeys")
    if keys is None or not isinstance(key, Key):
        return None
    if not any(fnmatch.fnmatchcase(model, pattern) for pattern in key.models):
        return Denial(f"key {key.name!r} may not use model {model!r}", status=403)
    return keys.check_rate(key)


@hookimpl
def request_finished(principal: Principal, usage: Usage | None) -> None:
    keys = store()
    key = principal.details.get("apikeys")
    if keys is not None and isinstance(key, Key) and usage is not None:
        keys.add_tokens(key.name, usage.total_tokens)
