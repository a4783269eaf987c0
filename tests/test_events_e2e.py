"""``/models/sse``, ``/models/logs`` and load progress end to end: a real router, real children
on tiny GGUFs, an SSE client reading in a thread of its own."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import statuses, wait_until
from tests.tiny_models import write_tiny_llama

KEY = "sse-test-key"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for seed, name in enumerate(("a", "b")):
        write_tiny_llama(tmp_path / f"{name}.gguf", seed=seed)
    return tmp_path


class EventReader:
    """An SSE client in a thread: keeps every event and comment it reads, and how the stream
    ended (None while it lasts; "" when it ended cleanly, else the error)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.ended: str | None = None
        self.status = 0
        self._url, self._headers = url, headers or {}
        self._is_open = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self._url, headers=self._headers, timeout=60) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[len("data: ") :]))
                    elif line.startswith(":"):
                        self.comments.append(line)
                        self._is_open.set()
            self.ended = ""
        except httpx.HTTPError as exc:
            self.ended = repr(exc)
        finally:
            self._is_open.set()

    def start(self) -> EventReader:
        self._thread.start()
        assert self._is_open.wait(30), "the stream did not open"
        assert self.status == 200, self.status
        return self

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive(), "the stream did not end"

    def seen(self, model: str, **data: Any) -> Callable[[], bool]:
        return lambda: self.find(model, **data) is not None

    def find(self, model: str, **data: Any) -> dict[str, Any] | None:
        for event in self.events:
            fields = event.get("data") or {}
            if event["model"] == model and all(fields.get(k) == v for k, v in data.items()):
                return event
        return None

    def statuses(self, model: str) -> list[str]:
        return [
            e["data"]["status"]
            for e in self.events
            if e["model"] == model and e["event"] in ("model_status", "status_change")
        ]


@contextmanager
def reading(url: str, headers: dict[str, str] | None = None) -> Iterator[EventReader]:
    reader = EventReader(url, headers).start()
    yield reader


def complete(router: RouterProcess, model: str) -> None:
    response = httpx.post(
        f"{router.base_url}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def test_an_sse_client_sees_every_change_with_its_reason_and_shutdown_ends_it(
    models: Path,
) -> None:
    with running_router(models, "--models-max", "1") as router:
        with reading(f"{router.base_url}/models/sse?logs=1") as sse:
            complete(router, "a")
            wait_until(sse.seen("a", status="loaded"), "a's load is told")
            assert sse.statuses("a") == ["loading", "loaded"]
            loaded = sse.find("a", status="loaded")
            assert loaded is not None and loaded["data"]["load_s"] > 0
            # its output, as the child printed it (while it loaded: llama.cpp's lines)
            wait_until(lambda: any(e["event"] == "log" for e in sse.events), "a log line")
            log_event = next(e for e in sse.events if e["event"] == "log")
            assert log_event["model"] == "a" and log_event["data"]["stream"] == "stderr"

            complete(router, "b")  # --models-max 1: a makes room for b
            wait_until(sse.seen("b", status="loaded"), "b's load is told")
            evicted = sse.find("a", status="unloading")
            assert evicted is not None
            assert evicted["data"] == {"status": "unloading", "reason": "evicted", "for": "b"}
            wait_until(sse.seen("a", status="unloaded", exit_code=0), "a's exit")

            httpx.post(f"{router.base_url}/models/unload", json={"model": "b"}, timeout=10)
            wait_until(sse.seen("b", status="unloaded"), "b's unload")
            assert sse.statuses("b")[-2:] == ["unloading", "unloaded"]
            assert sse.find("b", status="unloading", reason="requested") is not None
            assert sse.find("b", status="unloaded", exit_code=0, failed=True) is None

            complete(router, "a")
            os.kill(router.child_pids()["a"], signal.SIGKILL)
            wait_until(sse.seen("a", status="unloaded", signal=9), "a's crash")
            crash = sse.find("a", status="unloaded", signal=9)
            assert crash is not None
            assert crash["data"] == {
                "status": "unloaded",
                "exit_code": -9,
                "failed": True,
                "reason": "killed by signal 9 (SIGKILL)",
                "signal": 9,
                "was_loading": False,
            }
            wait_until(
                lambda: "model a crashed: killed by signal 9 (SIGKILL)" in router.stderr_text(),
                "the crash is logged in plain words",
            )
            complete(router, "a")  # the load after a crash is a restart
            wait_until(sse.seen("a", status="loading", restart=True), "a's restart")

            write_tiny_llama(models / "c.gguf", seed=7)
            httpx.post(f"{router.base_url}/models/reload", json={}, timeout=10)
            wait_until(lambda: any(e["event"] == "models_reload" for e in sse.events), "reload")
            assert {"model": "c", "event": "model_add"} in sse.events
            (models / "c.gguf").unlink()
            httpx.post(f"{router.base_url}/models/reload", json={}, timeout=10)
            wait_until(lambda: {"model": "c", "event": "model_remove"} in sse.events, "removal")

            logs = httpx.get(f"{router.base_url}/models/logs", params={"model": "a", "n": 2})
            assert logs.status_code == 200
            assert logs.json()["model"] == "a" and len(logs.json()["lines"]) == 2
            assert httpx.get(f"{router.base_url}/models/logs?model=a&n=0").status_code == 400

            router.process.send_signal(signal.SIGTERM)
            sse.join()
            # Ended by the router, its last chunk sent: not cut when the grace ran out.
            assert sse.ended == "", sse.ended
            assert router.process.wait(timeout=60) == 0
        text = router.stderr_text()
        assert "unloading model a to make room for b" in text
        assert "model a loaded in " in text
        assert "unloading model a: the router is stopping" in text
        assert "at unix:" not in text  # the child's start-up line is not repeated


def test_the_event_stream_filters_by_model_and_needs_the_key(models: Path) -> None:
    with running_router(models, "--api-key", KEY) as router:
        url = f"{router.base_url}/models/sse"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(f"{router.base_url}/models/logs?model=a", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        with reading(f"{url}?model=b", auth) as only_b:
            for model in ("a", "b"):
                httpx.post(
                    f"{router.base_url}/v1/completions",
                    json={"model": model, "prompt": "x", "max_tokens": 1},
                    headers=auth,
                    timeout=60,
                ).raise_for_status()
            wait_until(only_b.seen("b", status="loaded"), "b's load")
            assert {event["model"] for event in only_b.events} == {"b"}
            assert httpx.get(f"{url}?model=nope", headers=auth, timeout=10).status_code == 404


def stream_lines(router: RouterProcess, model: str) -> list[str]:
    with httpx.stream(
        "POST",
        f"{router.base_url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": True,
        },
        timeout=60,
    ) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


@pytest.mark.parametrize("is_on", [True, False])
def test_a_stream_waiting_for_its_load_gets_progress_comments_only_when_asked(
    models: Path, is_on: bool
) -> None:
    # No spare: the load starts a process, which takes far longer than the first comment's
    # 0.1 s (a refusal comes sooner, and keeps its own status).
    flags = ("--spares", "0", *(["--stream-load-progress"] if is_on else []))
    with running_router(models, *flags) as router:
        lines = stream_lines(router, "a")
        assert statuses(router)["a"] == "loaded"
        comments = [line for line in lines if line.startswith(":")]
        if is_on:
            assert comments and comments[0].startswith(": loading a (")
            assert lines[0] == comments[0]
        else:
            assert comments == []
        assert lines[-1] == "data: [DONE]"
        # Once loaded, nothing is added.
        assert not [line for line in stream_lines(router, "a") if line.startswith(":")]
