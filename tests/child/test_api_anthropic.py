"""Anthropic's Messages API, through a real router and child, with the official anthropic
client: the chat route's greedy text in Anthropic's shapes, and errors in Anthropic's shape
from the child and from the router."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.processes import ChildProcess, RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

KEY = "secret-key"
SYSTEM = "Book"
QUESTION = "What is the best book"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("anthropic")
    write_tiny_llama(folder / "tiny.gguf")
    with running_router(folder, "-c", "512", "--api-key", KEY) as router:
        yield router


@pytest.fixture
def client(router: RouterProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=router.base_url, api_key=KEY, max_retries=0) as client:
        yield client


def chat_reply(router: RouterProcess, max_tokens: int, **extra: Any) -> tuple[str, int, int]:
    """The greedy chat answer to SYSTEM and QUESTION: text, prompt and completion tokens."""
    with openai.OpenAI(base_url=router.openai_base_url, api_key=KEY, max_retries=0) as client:
        chat = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            max_tokens=max_tokens,
            temperature=0,
            **extra,
        )
    assert chat.usage is not None
    text = chat.choices[0].message.content or ""
    return text, chat.usage.prompt_tokens, chat.usage.completion_tokens


def ask(client: anthropic.Anthropic, max_tokens: int, **extra: Any) -> anthropic.types.Message:
    return client.messages.create(
        model="tiny",
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=max_tokens,
        extra_body={"temperature": 0},
        **extra,
    )


def test_a_message_is_the_chat_answer_to_its_system_prompt_and_messages(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    text, prompt_tokens, completion_tokens = chat_reply(router, 8)
    message = ask(client, 8)
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "tiny"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == text  # type: ignore[union-attr]
    assert message.stop_reason == ("max_tokens" if completion_tokens == 8 else "end_turn")
    assert message.stop_sequence is None
    usage = message.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == prompt_tokens
    assert usage.output_tokens == completion_tokens


def test_system_blocks_and_text_blocks_make_the_same_prompt(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    text, _, _ = chat_reply(router, 6)
    message = client.messages.create(
        model="tiny",
        system=[{"type": "text", "text": SYSTEM}],
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        max_tokens=6,
        extra_body={"temperature": 0},  # this client has no temperature argument
    )
    assert message.content[0].text == text  # type: ignore[union-attr]


def test_a_stop_sequence_ends_the_reply_and_is_named(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    text, _, _ = chat_reply(router, 24)
    assert len(text) >= 12, "the tiny model's greedy reply is long enough to cut"
    stop = text[6:9]
    message = ask(client, 24, stop_sequences=["never in it \u2603", stop])
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == stop
    assert message.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]


def test_a_streamed_message_sends_anthropics_event_sequence(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    text, prompt_tokens, completion_tokens = chat_reply(router, 8)
    events = list(
        client.messages.create(
            model="tiny",
            system=SYSTEM,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=8,
            extra_body={"temperature": 0},
            stream=True,
        )
    )
    kinds = [event.type for event in events]
    deltas = kinds.count("content_block_delta")
    assert deltas >= 1
    # The client drops ``ping`` events; the rest come in Anthropic's order.
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.content == []
    assert start.message.usage.input_tokens == prompt_tokens
    gathered = "".join(
        event.delta.text  # type: ignore[union-attr]
        for event in events
        if event.type == "content_block_delta"
    )
    assert gathered == text
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == ("max_tokens" if completion_tokens == 8 else "end_turn")
    assert delta.usage.output_tokens == completion_tokens


def test_a_stream_starts_with_a_ping_after_message_start(router: RouterProcess) -> None:
    with httpx.stream(
        "POST",
        f"{router.base_url}/v1/messages",
        headers={"x-api-key": KEY},
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": True,
        },
        timeout=30,
    ) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("event: ")]
    assert lines[:3] == ["event: message_start", "event: ping", "event: content_block_start"]
    assert lines[-1] == "event: message_stop"


def test_the_stream_helper_gathers_the_final_message(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    text, _, _ = chat_reply(router, 24)
    stop = text[6:9]
    with client.messages.stream(
        model="tiny",
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=24,
        extra_body={"temperature": 0},
        stop_sequences=[stop],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == stop


def test_count_tokens_counts_the_prompt_a_message_would_run(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    _, prompt_tokens, _ = chat_reply(router, 1)
    counted = client.messages.count_tokens(
        model="tiny", system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
    )
    assert counted.input_tokens == prompt_tokens


# ---- errors, in Anthropic's shape ------------------------------------------------------------


def assert_anthropic_error(body: object, kind: str, *words: str) -> None:
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert set(body) == {"type", "error"}
    for word in words:
        assert word in body["error"]["message"]


def test_an_unknown_model_is_anthropics_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert_anthropic_error(caught.value.body, "not_found_error", "no-such-model")


def test_a_missing_max_tokens_is_anthropics_bad_request(client: anthropic.Anthropic) -> None:
    """The client cannot leave max_tokens out; its raw ``post`` can, as other clients do."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post(
            "/v1/messages",
            body={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            cast_to=httpx.Response,
        )
    assert_anthropic_error(caught.value.body, "invalid_request_error", "max_tokens")


def test_a_wrong_key_is_anthropics_authentication_error(router: RouterProcess) -> None:
    with (
        anthropic.Anthropic(base_url=router.base_url, api_key="wrong", max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert_anthropic_error(caught.value.body, "authentication_error", "API key")


@pytest.mark.parametrize("is_chunked", [False, True], ids=["fast-path", "quart"])
def test_bad_json_is_anthropics_bad_request_on_both_router_paths(
    router: RouterProcess, is_chunked: bool
) -> None:
    """A body with a length takes the router's raw fast path; a chunked one takes Quart's."""
    payload = b'{"model": "tiny", "messages": ['

    def chunks() -> Iterator[bytes]:
        yield payload

    answer = httpx.post(
        f"{router.base_url}/v1/messages",
        headers={"x-api-key": KEY, "content-type": "application/json"},
        content=chunks() if is_chunked else payload,
        timeout=30,
    )
    assert answer.status_code == 400
    assert_anthropic_error(answer.json(), "invalid_request_error")


@pytest.mark.parametrize("is_chunked", [False, True], ids=["fast-path", "quart"])
def test_an_unknown_model_is_anthropic_shaped_on_both_router_paths(
    router: RouterProcess, is_chunked: bool
) -> None:
    payload = b'{"model": "nope", "messages": [], "max_tokens": 1}'

    def chunks() -> Iterator[bytes]:
        yield payload

    answer = httpx.post(
        f"{router.base_url}/v1/messages/count_tokens",
        headers={"x-api-key": KEY, "content-type": "application/json"},
        content=chunks() if is_chunked else payload,
        timeout=30,
    )
    assert answer.status_code == 404
    assert_anthropic_error(answer.json(), "not_found_error", "nope")


def test_openai_routes_keep_openais_error_shape(router: RouterProcess) -> None:
    answer = httpx.post(
        f"{router.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found_error"


# ---- a child that breaks off mid-stream ------------------------------------------------------

HUNG_BACKEND = textwrap.dedent('''
    """A backend that starts an Anthropic stream, then hangs: what a stuck server looks like."""
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'event: ping\\ndata: {"type": "ping"}\\n\\n')
            self.wfile.flush()
            time.sleep(3600)

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
''')


@pytest.fixture(scope="module")
def hung_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    site = tmp_path_factory.mktemp("hung-anthropic")
    (site / "hung.py").write_text(HUNG_BACKEND)
    (site / "conf.d").mkdir()
    (site / "conf.d" / "hung.toml").write_text(
        f'command = [{sys.executable!r}, "../hung.py", "{{port}}"]\nhealth = "/health"\n'
    )
    (site / "models").mkdir()
    with running_router(site / "models", "--timeout", "2", cwd=site) as router:
        yield router


@pytest.mark.parametrize("is_chunked", [False, True], ids=["fast-path", "quart"])
def test_a_stream_broken_off_ends_with_anthropics_error_event(
    hung_router: RouterProcess, is_chunked: bool
) -> None:
    payload = json.dumps(
        {"model": "hung", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield payload

    with httpx.stream(
        "POST",
        f"{hung_router.base_url}/v1/messages",
        content=chunks() if is_chunked else payload,
        headers={"content-type": "application/json"},
        timeout=30,
    ) as answer:
        lines = [line for line in answer.iter_lines() if line]
    assert lines[:2] == ["event: ping", 'data: {"type": "ping"}']
    assert lines[-2] == "event: error"
    error = json.loads(lines[-1].removeprefix("data: "))
    assert_anthropic_error(error, "api_error", "sent nothing more for too long")


@pytest.mark.parametrize("is_chunked", [False, True], ids=["fast-path", "quart"])
def test_the_childs_errors_are_anthropic_shaped_on_both_its_paths(
    shared_child: ChildProcess, is_chunked: bool
) -> None:
    """A body with a length takes the child's raw fast path; a chunked one takes Quart's."""
    payload = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})

    def chunks() -> Iterator[bytes]:
        yield payload.encode()

    answer = httpx.post(
        f"{shared_child.base_url}/v1/messages",
        headers={"content-type": "application/json"},
        content=chunks() if is_chunked else payload.encode(),
        timeout=30,
    )
    assert answer.status_code == 400
    assert_anthropic_error(answer.json(), "invalid_request_error", "max_tokens")
