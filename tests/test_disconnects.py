"""A client that leaves before it has read a byte of its answer frees the model at once:
its lease ends (``GET /models``: ``in_flight`` back to 0) and the child stops generating, on
the raw path (a ``Content-Length`` body) and on Quart's (a chunked one), for the OpenAI routes
and Ollama's alike, long before the router's ``-to/--timeout`` would have given up on it.

The hard case is an answer whose head is in but whose body Quart never starts to read, because
the client left in between: the ``HOLD_PLUGIN`` below widens that moment (an ``after_request``
hook that waits), so the test meets it every time instead of by chance.
"""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama

WAIT_S = 30.0
MAX_TOKENS = 60000  # longer than any wait here: only a cancellation stops it in time
HOLD = "X-Hold-Answer"

# Quart runs this after the route has returned its answer (the child's head is in) and before
# it reads the answer's body: the client leaves meanwhile. Any plugin's request hook that
# awaits something opens the same moment (and turns the raw path off).
HOLD_PLUGIN = textwrap.dedent(f"""
    import trio
    from quart import request
    from router import hookimpl

    @hookimpl
    def register_routes(app):
        @app.after_request
        async def hold_the_answer(response):
            if request.headers.get({HOLD!r}):
                await trio.sleep({WAIT_S * 4})  # until the client leaves, which cancels it
            return response
""")

OPENAI_STREAM = {
    "model": "alpha",
    "prompt": "go",
    "max_tokens": MAX_TOKENS,
    "ignore_eos": True,
    "stream": True,
}
OLLAMA_STREAM = {
    "model": "alpha",
    "prompt": "go",
    "raw": True,
    "options": {"num_predict": MAX_TOKENS, "temperature": 0},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("disconnects")
    write_tiny_llama(folder / "alpha.gguf", context_length=65536)
    (folder / "hold_plugin.py").write_text(HOLD_PLUGIN)
    return folder


@pytest.fixture(scope="module")
def router(models: Path) -> Iterator[RouterProcess]:
    with running_router(models, "-c", "65536", "--timeout", "600") as router:
        yield router


@pytest.fixture(scope="module")
def holding_router(models: Path) -> Iterator[RouterProcess]:
    plugin = str(models / "hold_plugin.py")
    with running_router(models, "-c", "65536", "--timeout", "600", "--plugin", plugin) as router:
        yield router


def send_and_leave(
    router: RouterProcess, path: str, body: dict[str, Any], *, is_chunked: bool, hold: bool
) -> None:
    """Send a streaming request over a raw socket, wait until the child generates for it, and
    close the socket without reading a byte of the answer."""
    host, port = router.base_url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    if hold:
        head.append(f"{HOLD}: 1")
    if is_chunked:
        head.append("Transfer-Encoding: chunked")
        framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload)
    else:
        head.append(f"Content-Length: {len(payload)}")
        framed = payload
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + framed)
        wait_until(lambda: slot(router)["is_processing"], "the child generates for it", WAIT_S)


def slot(router: RouterProcess) -> dict[str, Any]:
    slots = httpx.get(f"{router.base_url}/slots", params={"model": "alpha"}, timeout=WAIT_S)
    first: dict[str, Any] = slots.json()[0]
    return first


def in_flight(router: RouterProcess) -> int:
    data = httpx.get(f"{router.base_url}/models", timeout=WAIT_S).json()["data"]
    count: int = next(entry["in_flight"] for entry in data if entry["id"] == "alpha")
    return count


def assert_freed(router: RouterProcess) -> None:
    """The lease is given back and the child stopped, well before the generation's end."""
    wait_until(lambda: in_flight(router) == 0, "the model's lease is given back", WAIT_S)
    wait_until(lambda: not slot(router)["is_processing"], "the child stops generating", WAIT_S)
    assert slot(router)["next_token"]["n_decoded"] < MAX_TOKENS


@pytest.fixture(autouse=True)
def warm(request: pytest.FixtureRequest) -> None:
    """The model is loaded (and idle) before each test: a load is not what is measured."""
    for name in ("router", "holding_router"):
        if name in request.fixturenames:
            running: RouterProcess = request.getfixturevalue(name)
            answer = httpx.post(
                f"{running.base_url}/v1/completions",
                json={"model": "alpha", "prompt": "x", "max_tokens": 1},
                timeout=WAIT_S * 2,
            )
            assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("is_chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/completions", OPENAI_STREAM), ("/api/generate", OLLAMA_STREAM)],
    ids=["openai", "ollama"],
)
def test_a_client_that_leaves_unread_frees_the_model(
    router: RouterProcess, path: str, body: dict[str, Any], is_chunked: bool
) -> None:
    send_and_leave(router, path, body, is_chunked=is_chunked, hold=False)
    assert_freed(router)


@pytest.mark.parametrize("is_chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_that_leaves_before_a_whole_answer_frees_the_model(
    router: RouterProcess, is_chunked: bool
) -> None:
    """Not streamed: no write to the client fails before the end, so only the watch for
    the client's leaving (on the raw path, begun once the answer is slow to come) stops it."""
    body = {**OPENAI_STREAM, "stream": False}
    send_and_leave(router, "/v1/completions", body, is_chunked=is_chunked, hold=False)
    assert_freed(router)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/completions", OPENAI_STREAM), ("/api/generate", OLLAMA_STREAM)],
    ids=["openai", "ollama"],
)
def test_an_answer_quart_never_began_to_send_frees_the_model(
    holding_router: RouterProcess, path: str, body: dict[str, Any]
) -> None:
    send_and_leave(holding_router, path, body, is_chunked=True, hold=True)
    assert_freed(holding_router)
