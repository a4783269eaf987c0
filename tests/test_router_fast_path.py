"""The raw path in front of the router's Quart app (router/edge/fast_path.py) answers as Quart
does: the same requests, sent once with a ``Content-Length`` (the raw path takes them) and
once chunked (Quart takes them), get the same status, body and end-to-end headers, through
every check (Host, keys, plugins' hooks, model lookup, usage report).
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.edge.app import create_app
from router.edge.fast_path import FAST_PATHS, _forwarded_paths
from router.models.pool import ModelPool
from router.server import load_router_plugins
from router.settings import RouterSettings
from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama

WAIT_S = 30

PLUGIN = textwrap.dedent("""
    import json, os
    from pathlib import Path
    from router import Denial, Principal, hookimpl

    LOG = Path(os.environ["FAST_PATH_LOG"])

    @hookimpl
    def authenticate(request):
        user = request.headers.get("x-user")
        if user == "mallory":
            return Denial("mallory is not welcome", status=401)
        if user == "flood":
            return Denial("slow down", status=429, retry_after_s=7)
        return Principal(name=user) if user else None

    @hookimpl
    def authorize(principal, model, request):
        if principal.name == "bob" and model == "b":
            return Denial("bob may not use b")
        return None

    @hookimpl
    def resolve_model(requested, request, catalog):
        if requested == "latest":
            return "a"
        return request.query.get("route_to")

    @hookimpl
    def transform_request(model, body, principal):
        if "max_tokens" in body:
            body["max_tokens"] = min(body["max_tokens"], 2)
        return body

    @hookimpl
    def request_finished(model, principal, usage, duration_s, status):
        with LOG.open("a") as file:
            file.write(json.dumps({"model": model, "principal": principal.name, "status": status,
                                   "tokens": usage.completion_tokens if usage else None}) + "\\n")
""")

# Headers that differ by framing or by the moment, not by what was answered.
_FRAMING = frozenset({"date", "content-length", "transfer-encoding", "connection"})


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProcess, Path]]:
    folder = tmp_path_factory.mktemp("fast")
    for seed, name in enumerate(("a", "b")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed, context_length=512)
    plugin = folder / "fast_path_plugin.py"
    plugin.write_text(PLUGIN)
    log = folder / "finished.jsonl"
    os.environ["FAST_PATH_LOG"] = str(log)
    try:
        with running_router(
            folder, "-c", "512", "--plugin", str(plugin), "--api-key", "k1"
        ) as running:
            yield running, log
    finally:
        del os.environ["FAST_PATH_LOG"]


def both_ways(
    router: RouterProcess,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> tuple[httpx.Response, httpx.Response]:
    """``body`` sent with a Content-Length (the raw path), then chunked (Quart)."""
    with httpx.Client(base_url=router.base_url, timeout=WAIT_S) as client:
        fast = client.post(path, content=body, headers=headers)
        slow = client.post(path, content=iter([body]), headers=headers)
    assert "content-length" in fast.request.headers
    assert slow.request.headers.get("transfer-encoding") == "chunked"
    return fast, slow


def comparable(response: httpx.Response) -> tuple[int, object, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _FRAMING}
    try:
        body: object = response.json()
    except json.JSONDecodeError:
        return response.status_code, response.text, headers
    if isinstance(body, dict):
        for varying in ("id", "created", "system_fingerprint", "timings"):
            body.pop(varying, None)
    return response.status_code, body, headers


KEY = {"Authorization": "Bearer k1", "Content-Type": "application/json"}
GREEDY = {"max_tokens": 1, "temperature": 0}  # the same tokens both ways
ASKS = {
    "completion": ("/v1/completions", {"model": "a", "prompt": "x", **GREEDY}, {}),
    "chat": (
        "/v1/chat/completions",
        {"model": "a", "messages": [{"role": "user", "content": "hi"}], **GREEDY},
        {},
    ),
    "plugin-user": (
        "/v1/completions", {"model": "latest", "prompt": "x", **GREEDY, "max_tokens": 9},
        {"x-user": "alice"},
    ),
    "plugin-denial-401": ("/v1/completions", {"model": "a", "prompt": "x"}, {"x-user": "mallory"}),
    "plugin-denial-429": ("/v1/completions", {"model": "a", "prompt": "x"}, {"x-user": "flood"}),
    "plugin-authorize-403": ("/v1/completions", {"model": "b", "prompt": "x"}, {"x-user": "bob"}),
    "unknown-model": ("/v1/completions", {"model": "nope", "prompt": "x"}, {}),
    "no-model": ("/v1/completions", {"prompt": "x"}, {}),
    "model-not-a-string": ("/v1/completions", {"model": 5, "prompt": "x"}, {}),
    "tokenize": ("/tokenize", {"model": "a", "content": "hello"}, {}),
    "query-model": ("/tokenize?model=b&model=a", {"content": "hello"}, {}),
    "query-routed": ("/tokenize?route_to=b", {"model": "zzz", "content": "hi"}, {}),
    "no-autoload": ("/tokenize?autoload=0", {"model": "b", "content": "hi"}, {}),
    "child-error": ("/v1/completions", {"model": "a", "prompt": 5}, {}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ASKS))
def test_the_raw_path_answers_as_quart_does(router: tuple[RouterProcess, Path], name: str) -> None:
    running, _ = router
    path, payload, extra = ASKS[name]
    fast, slow = both_ways(running, path, json.dumps(payload).encode(), {**KEY, **extra})
    assert comparable(fast) == comparable(slow), (fast.text, slow.text)


@pytest.mark.parametrize(
    ("name", "body", "headers"),
    [
        ("bad-json", b'{"model": ', KEY),
        ("no-key", b'{"model":"a","prompt":"x"}', {"Content-Type": "application/json"}),
        ("wrong-key", b'{"model":"a","prompt":"x"}', {"Authorization": "Bearer k2"}),
        ("foreign-host", b'{"model":"a","prompt":"x"}', {**KEY, "Host": "evil.example"}),
        ("not-an-object", b"[1, 2]", KEY),
        ("empty", b"", KEY),
    ],
)
def test_refusals_are_the_same_both_ways(
    router: tuple[RouterProcess, Path], name: str, body: bytes, headers: dict[str, str]
) -> None:
    running, _ = router
    fast, slow = both_ways(running, "/v1/completions", body, headers)
    assert fast.status_code >= 400
    assert comparable(fast) == comparable(slow), (fast.text, slow.text)


def test_a_stream_is_the_same_both_ways(router: tuple[RouterProcess, Path]) -> None:
    running, _ = router
    body = json.dumps(
        {"model": "a", "prompt": "x", "max_tokens": 3, "stream": True, "temperature": 0}
    ).encode()
    fast, slow = both_ways(running, "/v1/completions", body, KEY)
    assert fast.status_code == slow.status_code == 200
    assert fast.headers["content-type"].startswith("text/event-stream")

    def events(response: httpx.Response) -> list[object]:
        found: list[object] = []
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[len("data: ") :])
                event.pop("id", None)
                event.pop("created", None)
                event.pop("timings", None)
                found.append(event)
        return found

    assert events(fast) == events(slow)
    assert comparable(fast)[2] == comparable(slow)[2]


def test_usage_is_reported_the_same_both_ways(router: tuple[RouterProcess, Path]) -> None:
    running, log = router
    log.unlink(missing_ok=True)
    body = json.dumps({"model": "a", "prompt": "x", "max_tokens": 50, "ignore_eos": True})
    both_ways(running, "/v1/completions", body.encode(), {**KEY, "x-user": "carol"})

    def carols() -> list[dict[str, object]]:
        # Reports come after the answers, so an earlier test's may land in the log too.
        lines = log.read_text().splitlines() if log.exists() else []
        reports = [json.loads(line) for line in lines]
        return [report for report in reports if report.get("principal") == "carol"]

    wait_until(lambda: len(carols()) >= 2, "both reported")
    reports = carols()
    assert len(reports) == 2
    assert reports[0] == reports[1] == {"model": "a", "principal": "carol", "status": 200,
                                        "tokens": 2}  # fmt: skip


def test_an_answer_keeps_the_childs_length_on_the_raw_path(
    router: tuple[RouterProcess, Path],
) -> None:
    running, _ = router
    body = json.dumps({"model": "a", "content": "hello"}).encode()
    fast, slow = both_ways(running, "/tokenize", body, KEY)
    assert fast.headers["content-length"] == str(len(fast.content))
    assert "content-length" not in slow.headers  # Quart streams whatever it forwards


def _app_with(plugin_source: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    plugin = tmp_path / "hooked.py"
    plugin.write_text(plugin_source)
    settings = RouterSettings(load_installed_plugins=False, plugins=(str(plugin),))
    plugins = load_router_plugins(settings)
    pool = ModelPool({}, models_max=1, plugins=plugins)
    return create_app(pool, settings, plugins, rescan=lambda: None)


def test_the_raw_path_takes_only_what_quart_would_forward(tmp_path: Path) -> None:
    app = _app_with("", tmp_path)
    assert _forwarded_paths(app) == FAST_PATHS


def test_a_plugin_route_over_an_openai_path_is_served_by_quart(tmp_path: Path) -> None:
    app = _app_with(
        textwrap.dedent("""
            from router import hookimpl

            @hookimpl
            def register_routes(app):
                @app.post("/v1/embeddings")
                async def mine():
                    return {"mine": True}
        """),
        tmp_path,
    )
    assert _forwarded_paths(app) == FAST_PATHS - {"/v1/embeddings"}


def test_a_plugin_request_hook_turns_the_raw_path_off(tmp_path: Path) -> None:
    app = _app_with(
        textwrap.dedent("""
            from router import hookimpl

            @hookimpl
            def register_routes(app):
                @app.before_request
                async def audit():
                    pass
        """),
        tmp_path,
    )
    assert _forwarded_paths(app) == frozenset()
