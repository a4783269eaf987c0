"""The events hub, the SSE bytes made from it, the pool's event contract and the lifecycle
log lines, without processes (a stand-in supervisor plays the children's part)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from router.edge.events_api import SUBSCRIBED, event_stream, register_events_api
from router.edge.load_progress import LoadProgress, is_streaming_request
from router.edge.web import new_app
from router.errors import Unavailable
from router.models.events import LOG_LINE, STATUS_CHANGE, Event, EventHub
from router.models.pool import ModelPool
from router.models.state import ModelState
from router.processes.child_process import Child
from router.processes.supervisor import ChildExit
from router.spec import ModelSpec
from tests.test_lean_http import WAIT_S, Client, serving
from tests.test_pool import attached_pool


def status_events(hub: EventHub) -> list[Event]:
    """Every event but log lines, as the listeners hear them (in order)."""
    heard: list[Event] = []
    hub.listen(heard.append)
    return heard


# ---- the hub ------------------------------------------------------------------------------


async def test_a_subscriber_that_falls_behind_is_cut_off_and_the_others_go_on() -> None:
    hub = EventHub(backlog=4)
    with hub.subscribe() as slow, hub.subscribe() as reading:
        for number in range(10):
            hub.publish(Event("m", STATUS_CHANGE, {"n": number}))
            assert (await reading.receive()).data == {"n": number}
        kept = [event.data async for event in slow]  # what it had, then the end
    assert kept == [{"n": number} for number in range(4)]
    assert hub._subscribers == []


async def test_closing_the_hub_ends_every_stream_and_each_later_one_at_once() -> None:
    hub = EventHub()
    heard = status_events(hub)
    with hub.subscribe() as events:
        hub.close()
        assert [event async for event in events] == []
    with hub.subscribe() as late:
        hub.publish(Event("m", STATUS_CHANGE, {"status": "unloading"}))
        assert [event async for event in late] == []
    assert len(heard) == 1  # listeners still hear the shutdown's unloading


async def test_log_lines_reach_only_the_streams_that_asked_for_their_model() -> None:
    hub = EventHub()
    heard = status_events(hub)
    assert not hub.wants_logs
    with (
        hub.subscribe() as plain,
        hub.subscribe(logs=True, models=frozenset({"a"})) as a_logs,
    ):
        assert hub.wants_logs
        hub.publish(Event("b", LOG_LINE, {"line": "of b", "stream": "stderr"}))
        hub.publish(Event("a", LOG_LINE, {"line": "of a", "stream": "stderr"}))
        hub.publish(Event("*", "models_reload"))
        hub.close()
        assert [e.event async for e in plain] == ["models_reload"]
        assert [(e.model, e.event) async for e in a_logs] == [
            ("a", LOG_LINE),
            ("*", "models_reload"),
        ]
    assert [e.event for e in heard] == ["models_reload"]  # listeners never get log lines


# ---- the SSE bytes ----------------------------------------------------------------------------


async def test_an_event_stream_pings_when_quiet_and_ends_with_the_hub(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = EventHub()
    stream = event_stream(hub, models=None, logs=False, ping_s=15)
    assert await stream.__anext__() == SUBSCRIBED
    hub.publish(Event("m", STATUS_CHANGE, {"status": "loaded", "load_s": 1.5}))
    assert await stream.__anext__() == (
        b'data: {"model":"m","event":"status_change","data":{"status":"loaded","load_s":1.5}}\n\n'
    )
    started = trio.current_time()
    assert await stream.__anext__() == b": ping\n\n"
    assert trio.current_time() - started == pytest.approx(15)
    hub.close()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert hub._subscribers == []


# ---- the pool's events (the contract in events.py) -------------------------------------------


def two_model_pool(nursery: trio.Nursery) -> tuple[ModelPool, list[Event]]:
    specs = {name: ModelSpec(id=name, path=Path(f"{name}.gguf")) for name in ("a", "b")}
    pool, _ = attached_pool(specs, nursery, models_max=1)
    return pool, status_events(pool.events)


async def _use(pool: ModelPool, model: str) -> None:
    async with pool.lease(pool.models[model], autoload=True):
        pass


async def test_a_load_reports_its_duration_and_an_eviction_names_the_model_it_is_for(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pool, heard = two_model_pool(nursery)
    async with trio.open_nursery() as requests:
        requests.start_soon(_use, pool, "a")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2.5)
        pool.child_ready("a", "unix:/nonexistent.sock", 1)
    async with trio.open_nursery() as requests:
        requests.start_soon(_use, pool, "b")
        await trio.testing.wait_all_tasks_blocked()
        pool.child_exited("a", ChildExit(0, "", was_stopped=True, was_ready=True))
        pool.child_ready("b", "unix:/nonexistent.sock", 2)
    assert [(e.model, e.event, e.data) for e in heard] == [
        ("a", "model_status", {"status": "loading"}),
        ("a", "status_change", {"status": "loaded", "load_s": 2.5}),
        ("a", "status_change", {"status": "unloading", "reason": "evicted", "for": "b"}),
        ("a", "status_change", {"status": "unloaded", "exit_code": 0}),
        ("b", "model_status", {"status": "loading"}),
        ("b", "status_change", {"status": "loaded", "load_s": 0.0}),
    ]


async def test_a_crash_says_how_and_the_next_load_is_a_restart(nursery: trio.Nursery) -> None:
    pool, heard = two_model_pool(nursery)
    async with trio.open_nursery() as requests:
        requests.start_soon(_use, pool, "a")
        await trio.testing.wait_all_tasks_blocked()
        pool.child_ready("a", "unix:/nonexistent.sock", 1)
    heard.clear()
    killed = ChildExit(-9, "killed by signal 9 (SIGKILL)", was_stopped=False, was_ready=True)
    pool.child_exited("a", killed)
    async with trio.open_nursery() as requests:
        requests.start_soon(_use, pool, "a")
        await trio.testing.wait_all_tasks_blocked()
        pool.child_ready("a", "unix:/nonexistent.sock", 2)
    assert [e.data for e in heard[:2]] == [
        {
            "status": "unloaded",
            "exit_code": -9,
            "failed": True,
            "reason": "killed by signal 9 (SIGKILL)",
            "was_loading": False,
            "signal": 9,
        },
        {"status": "loading", "restart": True},
    ]


async def test_unload_reasons_and_the_catalog_events(nursery: trio.Nursery) -> None:
    pool, heard = two_model_pool(nursery)
    async with trio.open_nursery() as requests:
        requests.start_soon(_use, pool, "a")
        await trio.testing.wait_all_tasks_blocked()
        pool.child_ready("a", "unix:/nonexistent.sock", 1)
    heard.clear()
    pool.request_unload(pool.models["a"])
    pool.child_exited("a", ChildExit(0, "", was_stopped=True, was_ready=True))
    spec_c = ModelSpec(id="c", path=Path("c.gguf"))
    pool.apply_catalog({"a": pool.models["a"].spec, "c": spec_c}, {})
    assert [(e.model, e.event, e.data) for e in heard] == [
        ("a", "status_change", {"status": "unloading", "reason": "requested"}),
        ("a", "status_change", {"status": "unloaded", "exit_code": 0}),
        ("c", "model_add", None),
        ("b", "model_remove", None),
        ("*", "models_reload", None),
    ]


async def test_log_lines_are_kept_per_model_and_published_only_while_someone_listens(
    nursery: trio.Nursery,
) -> None:
    pool, _ = two_model_pool(nursery)
    pool.child_output("a", "nobody listens", "stderr")
    with pool.events.subscribe(logs=True) as events:
        pool.child_output("a", "someone listens", "stdout")
        pool.events.close()
        published = [e.data async for e in events]
    assert published == [{"line": "someone listens", "stream": "stdout"}]
    assert list(pool.models["a"].recent_lines) == ["nobody listens", "someone listens"]


# ---- the log lines --------------------------------------------------------------------------


async def test_lifecycle_lines_say_how_long_for_whom_and_why(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    pool, _ = two_model_pool(nursery)
    publish = pool.events.publish
    with caplog.at_level(logging.INFO, logger="router.models"):
        publish(Event("a", STATUS_CHANGE, {"status": "loaded", "load_s": 1.234}))
        publish(Event("a", STATUS_CHANGE, {"status": "unloading", "reason": "evicted", "for": "b"}))
        crash = {"status": "unloaded", "exit_code": -9, "failed": True, "was_loading": False}
        publish(Event("a", STATUS_CHANGE, {**crash, "reason": "killed by signal 9 (SIGKILL)"}))
    assert caplog.messages == [
        "model a loaded in 1.23 s",
        "unloading model a to make room for b",
        "model a crashed: killed by signal 9 (SIGKILL)",
    ]


def test_a_crash_is_said_by_its_signal_not_by_the_childs_last_line() -> None:
    child = Child(spec=ModelSpec(id="m", path=Path("m.gguf")), argv=[], env={})
    child.note_line("llama_model_loader: an error-looking but ordinary line")
    assert child.exit_reason(-signal.SIGKILL) == "killed by signal 9 (SIGKILL)"
    assert child.exit_reason(-signal.SIGSEGV) == "killed by signal 11 (SIGSEGV)"
    assert child.exit_reason(3).startswith("llama_model_loader")  # its last error line
    child.last_error = ""
    assert child.exit_reason(3) == (
        "exited with code 3: llama_model_loader: an error-looking but ordinary line"
    )
    child.fatal_error = "not responding for 15s"
    assert child.exit_reason(-signal.SIGKILL) == "not responding for 15s"


def test_a_childs_startup_noise_is_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    child = Child(spec=ModelSpec(id="m", path=Path("m.gguf")), argv=[], env={})
    reported: list[tuple[str, str]] = []
    child.report_line = lambda line, stream: reported.append((line, stream))
    warning = "llama_context: n_ctx_seq (4096) > n_ctx_train (2048)"
    with caplog.at_level(logging.DEBUG, logger="router.children"):
        child.note_line(warning)
        child.note_line(warning)
        child.note_line("serving m (m.gguf, n_ctx 4096, 1 slot(s), 1 threads) at unix:/x.sock")
        child.note_line(" * Running on http://127.0.0.1:8000 (CTRL + C to quit)")
        child.was_ready = True
        child.note_line(warning)  # once it serves, a repeated line is news again
    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in levels] == [
        logging.INFO, logging.DEBUG, logging.DEBUG, logging.DEBUG, logging.INFO,
    ]  # fmt: skip
    assert len(reported) == 5  # every line still reaches the log view and the SSE


# ---- load progress --------------------------------------------------------------------------


def test_only_a_streaming_body_asks_for_progress() -> None:
    assert is_streaming_request(b'{"model": "m", "stream": true}')
    assert not is_streaming_request(b'{"model": "m", "stream": false}')
    assert not is_streaming_request(b'{"model": "m"}')
    assert not is_streaming_request(b"[1, 2]")
    assert not is_streaming_request(b"\xff not json")


async def test_a_begun_stream_ends_with_the_error_or_the_childs_refusal_as_one_event() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    progress = LoadProgress("m", send)
    progress.has_begun = True
    await progress.send({"type": "http.response.start", "status": 400, "headers": []})
    await progress.send({"type": "http.response.body", "body": b'{"error": {"message": "no',
                         "more_body": True})  # fmt: skip
    await progress.send({"type": "http.response.body", "body": b'"}}', "more_body": False})
    assert sent == [
        {"type": "http.response.body", "body": b'data: {"error":{"message":"no"}}\n\n',
         "more_body": False},
    ]  # fmt: skip
    sent.clear()
    await progress.fail(Unavailable("model 'm' failed to load: bad file"))
    assert sent[0]["more_body"] is False
    assert b"failed to load: bad file" in sent[0]["body"]  # type: ignore[operator]


async def test_a_begun_stream_on_anthropics_route_ends_with_anthropics_error_event() -> None:
    sent: list[bytes] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message["body"])  # type: ignore[arg-type]

    async def refused(body: bytes) -> dict[str, Any]:
        progress = LoadProgress("m", send, "/v1/messages")
        progress.has_begun = True
        await progress.send({"type": "http.response.start", "status": 503, "headers": []})
        await progress.send({"type": "http.response.body", "body": body, "more_body": False})
        event, data = sent.pop().decode().split("\n")[:2]
        assert event == "event: error"
        parsed: dict[str, Any] = json.loads(data.removeprefix("data: "))
        return parsed

    # The router's own error, the child's in OpenAI's shape, the child's in Anthropic's.
    progress = LoadProgress("m", send, "/v1/messages")
    progress.has_begun = True
    await progress.fail(Unavailable("model 'm' failed to load: bad file"))
    event, data = sent.pop().decode().split("\n")[:2]
    assert event == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "model 'm' failed to load: bad file"},
    }
    assert await refused(b'{"error": {"message": "busy", "type": "unavailable_error"}}') == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    anthropic = {"type": "error", "error": {"type": "overloaded_error", "message": "full"}}
    assert await refused(json.dumps(anthropic).encode()) == anthropic
    assert (await refused(b"not json"))["type"] == "error"


# ---- through the router's HTTP server ---------------------------------------------------------


async def test_a_client_that_leaves_the_event_stream_is_unsubscribed(nursery: trio.Nursery) -> None:
    pool, _ = two_model_pool(nursery)
    app = new_app("events")

    async def resolve(name: str) -> ModelState:
        return pool.resolve(name)

    register_events_api(app, pool, resolve)
    async with serving(cast(Any, app)) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/models/sse?logs=1")
        received = b""
        with trio.fail_after(WAIT_S):
            while SUBSCRIBED not in received:
                received += await client.stream.receive_some(65536)
        assert pool.events.wants_logs
        pool.child_output("a", "a line", "stderr")
        with trio.fail_after(WAIT_S):
            while b'"line":"a line"' not in received:  # each event leaves at once
                received += await client.stream.receive_some(65536)
        await client.stream.aclose()
        with trio.fail_after(WAIT_S):
            while pool.events._subscribers:
                await trio.sleep(0.01)
        assert not pool.events.wants_logs
