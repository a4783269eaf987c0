"""The raw path in front of the child's Quart app (``fast_path.py``) answers as Quart would.

A body with a Content-Length takes the fast path; the same body sent chunked goes through
Quart. Both must give the same answers and the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.processes import ChildProcess


def _both_ways(child: ChildProcess, path: str, body: dict[str, Any]) -> list[httpx.Response]:
    raw = json.dumps(body).encode()

    def chunked() -> Iterator[bytes]:
        yield raw[:10]
        yield raw[10:]

    with httpx.Client(base_url=child.base_url, timeout=60) as client:
        fast = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        slow = client.post(path, content=chunked(), headers={"Content-Type": "application/json"})
    assert "content-length" not in slow.request.headers  # it really went chunked
    return [fast, slow]


@pytest.mark.parametrize("path", ["/v1/completions", "/completions"])
def test_a_completion_is_the_same_either_way(shared_child: ChildProcess, path: str) -> None:
    body = {"prompt": "hello", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    fast, slow = _both_ways(shared_child, path, body)
    assert fast.status_code == slow.status_code == 200
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    a, b = fast.json(), slow.json()
    assert a["choices"] == b["choices"]
    assert a["usage"] == b["usage"]
    assert a["usage"]["completion_tokens"] == 6


def test_a_chat_stream_is_the_same_either_way(shared_child: ChildProcess) -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    fast, slow = _both_ways(shared_child, "/v1/chat/completions", body)
    assert fast.headers["content-type"] == slow.headers["content-type"] == "text/event-stream"

    def contents(response: httpx.Response) -> list[Any]:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return [json.loads(event)["choices"] for event in events[:-1]]

    assert contents(fast) == contents(slow)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "hi", "n": 99}, 400, "n"),
        ({"prompt": []}, 400, "prompt"),
    ],
)
def test_an_error_is_the_same_either_way(
    shared_child: ChildProcess, body: dict[str, Any], status: int, field: str
) -> None:
    fast, slow = _both_ways(shared_child, "/v1/completions", body)
    assert fast.status_code == slow.status_code == status
    assert fast.json() == slow.json()
    assert field in fast.json()["error"]["message"]


def test_a_body_that_is_not_json_is_the_same_either_way(shared_child: ChildProcess) -> None:
    with httpx.Client(base_url=shared_child.base_url, timeout=60) as client:
        fast = client.post("/v1/completions", content=b"{not json")
        slow = client.post("/v1/completions", content=iter([b"{not ", b"json"]))
    assert fast.status_code == slow.status_code == 400
    assert fast.json() == slow.json()


def test_health_answers_on_both_paths(shared_child: ChildProcess) -> None:
    for path in ("/health", "/v1/health"):
        response = httpx.get(shared_child.base_url + path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["content-type"] == "application/json"
