"""Counting an answer's tokens from its bytes, split anywhere, from any backend."""

from __future__ import annotations

import itertools
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from router.child import responses
from router.child.engine import Finished, FinishReason, Piece
from router.edge.sse import EVENT_BYTES
from router.edge.usage import BATCH_BYTES, BATCH_CHUNKS, HEAD_BYTES, TAIL_BYTES, UsageCounter
from router.hooks.plugin_types import Usage
from tests.processes import running_router
from tests.tiny_models import write_tiny_llama

SSE = "text/event-stream"
JSON = "application/json"


@dataclass(frozen=True)
class Sample:
    name: str
    content_type: str
    body: bytes
    usage: Usage | None


def _child_stream(shape: str, pieces: Sequence[str], *, include_usage: bool) -> bytes:
    """The bytes ``llama-router child`` streams for ``pieces`` (5 prompt tokens)."""
    finished = Finished(FinishReason.LENGTH, prompt_tokens=5, completion_tokens=len(pieces))

    async def items() -> AsyncIterator[tuple[int, Piece | Finished]]:
        for piece in pieces:
            yield 0, Piece(piece)
        yield 0, finished

    async def collect() -> bytes:
        ids = responses.ResponseIds(model="tiny", prefix="x")
        stream = responses.chat_stream(ids) if shape == "chat" else responses.text_stream(ids)
        events = responses.sse_events(items(), stream, include_usage=include_usage)
        return b"".join([event async for event in events])

    return trio.run(collect)


def _sse(*events: object, newline: bytes = b"\n") -> bytes:
    lines = [
        b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode())
        for event in events
    ]
    return b"".join(line + newline + newline for line in lines)


def _llama_server_chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": 1717000000,
        "id": "chatcmpl-ab12",
        "model": "gpt-3.5-turbo",
        "system_fingerprint": "b5123-1a2b3c4d",
        "object": "chat.completion.chunk",
    }


# What llama-server sends: keys in nlohmann's sorted order, usage with a nested object.
LLAMA_SERVER_USAGE = {
    "completion_tokens": 4,
    "prompt_tokens": 9,
    "prompt_tokens_details": {"cached_tokens": 0},
    "total_tokens": 13,
}
LLAMA_SERVER_TIMINGS = {
    "prompt_n": 9,
    "prompt_ms": 12.5,
    "prompt_per_token_ms": 1.38,
    "prompt_per_second": 720.0,
    "predicted_n": 4,
    "predicted_ms": 20.1,
    "predicted_per_token_ms": 5.02,
    "predicted_per_second": 199.0,
}
LLAMA_SERVER_PIECES = [
    _llama_server_chunk({"role": "assistant", "content": None}),
    *(_llama_server_chunk({"content": piece}) for piece in ["Hel", "lo", " wor", "ld"]),
]
LLAMA_SERVER_CHAT = json.dumps(
    {
        "choices": [
            {
                "finish_reason": "length",
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
            }
        ],
        "created": 1717000000,
        "model": "gpt-3.5-turbo",
        "system_fingerprint": "b5123-1a2b3c4d",
        "object": "chat.completion",
        "usage": LLAMA_SERVER_USAGE,
        "id": "chatcmpl-ab12",
        "timings": LLAMA_SERVER_TIMINGS,
    },
    separators=(",", ":"),
).encode()
LLAMA_SERVER_NATIVE_STREAM = _sse(
    *(
        {"index": 0, "content": piece, "tokens": [], "stop": False, "id_slot": 0}
        for piece in ["Hel", "lo", " wor", "ld"]
    ),
    {
        "index": 0,
        "content": "",
        "tokens": [],
        "stop": True,
        "tokens_predicted": 4,
        "tokens_evaluated": 9,
        "timings": LLAMA_SERVER_TIMINGS,
    },
)
FINAL = _llama_server_chunk({}, "length")

NO_PROMPT_FOUR = Usage(prompt_tokens=0, completion_tokens=4, total_tokens=4)
LLAMA_SERVER = Usage(prompt_tokens=9, completion_tokens=4, total_tokens=13)
CHILD = Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)
VECTOR = [0.0123456789] * 4096

SAMPLES = [
    Sample(
        "child chat",
        JSON,
        json.dumps(
            responses.chat_completion(
                responses.ResponseIds(model="tiny", prefix="x"),
                [
                    responses.Choice(
                        "Hi there",
                        Finished(FinishReason.STOP, prompt_tokens=5, completion_tokens=3),
                    )
                ],
                with_logprobs=False,
            )
        ).encode(),
        CHILD,
    ),
    Sample(
        "child chat stream with include_usage",
        SSE,
        _child_stream("chat", ["Hi", " there", "!"], include_usage=True),
        CHILD,
    ),
    Sample(
        "child chat stream without include_usage",
        SSE,
        _child_stream("chat", ["Hi", " there", "!"], include_usage=False),
        CHILD,  # its last chunk carries llama-server's timings
    ),
    Sample(
        "child completion stream without include_usage",
        SSE,
        _child_stream("text", ["a", "b", "c", "d"], include_usage=False),
        Usage(prompt_tokens=5, completion_tokens=4, total_tokens=9),
    ),
    Sample(
        "child embeddings",
        JSON,
        json.dumps(responses.embedding_list("tiny", [[0.5] * 8], 7, "float")).encode(),
        Usage(prompt_tokens=7, completion_tokens=0, total_tokens=7),
    ),
    Sample("llama-server chat, nested usage", JSON, LLAMA_SERVER_CHAT, LLAMA_SERVER),
    Sample(
        "llama-server stream with include_usage",
        SSE,
        _sse(
            *LLAMA_SERVER_PIECES,
            FINAL,
            {**_llama_server_chunk({}), "choices": [], "usage": LLAMA_SERVER_USAGE},
            b"[DONE]",
        ),
        LLAMA_SERVER,
    ),
    Sample(
        "llama-server stream without include_usage, with timings",
        SSE,
        _sse(*LLAMA_SERVER_PIECES, {**FINAL, "timings": LLAMA_SERVER_TIMINGS}, b"[DONE]"),
        LLAMA_SERVER,
    ),
    Sample(
        "older llama-server stream: no usage, no timings",
        SSE,
        _sse(*LLAMA_SERVER_PIECES, FINAL, b"[DONE]"),
        NO_PROMPT_FOUR,
    ),
    Sample(
        "stream with CRLF line ends",
        SSE,
        _sse(*LLAMA_SERVER_PIECES, FINAL, b"[DONE]", newline=b"\r\n"),
        NO_PROMPT_FOUR,
    ),
    Sample(
        "OpenAI stream: usage null in every chunk, then the usage chunk",
        SSE,
        _sse(
            *({**chunk, "usage": None} for chunk in LLAMA_SERVER_PIECES),
            {**FINAL, "usage": None},
            {**_llama_server_chunk({}), "choices": [], "usage": {**LLAMA_SERVER_USAGE}},
            b"[DONE]",
        ),
        LLAMA_SERVER,
    ),
    Sample(
        "tool call deltas and reasoning count as tokens",
        SSE,
        _sse(
            _llama_server_chunk({"reasoning_content": "hm"}),
            _llama_server_chunk({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}),
            _llama_server_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            _llama_server_chunk({"content": "ok"}),
            FINAL,
        ),
        NO_PROMPT_FOUR,
    ),
    Sample("llama-server /completion stream", SSE, LLAMA_SERVER_NATIVE_STREAM, LLAMA_SERVER),
    Sample(
        "llama-server /completion answer",
        JSON,
        json.dumps(
            {"content": "Hello world", "stop": True, "tokens_predicted": 4, "tokens_evaluated": 9}
        ).encode(),
        LLAMA_SERVER,
    ),
    Sample(
        "long embeddings answer, usage last",
        JSON,
        json.dumps(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": VECTOR}] * 8,
                "usage": {"prompt_tokens": 40, "total_tokens": 40},
            }
        ).encode(),
        Usage(prompt_tokens=40, completion_tokens=0, total_tokens=40),
    ),
    Sample(
        "long embeddings answer, usage first",
        JSON,
        json.dumps(
            {
                "usage": {"prompt_tokens": 40, "prompt_tokens_details": {}, "total_tokens": 40},
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": VECTOR}] * 8,
            }
        ).encode(),
        Usage(prompt_tokens=40, completion_tokens=0, total_tokens=40),
    ),
    Sample(
        "an error body",
        JSON,
        b'{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}',
        None,
    ),
    Sample("not JSON", "text/plain", b"Internal Server Error", None),
    Sample(
        "an SSE error event",
        SSE,
        _sse({"error": {"code": 500, "message": "boom", "type": "server_error"}}),
        None,
    ),
]


def count(sample: Sample, chunks: Sequence[bytes]) -> Usage | None:
    counter = UsageCounter()
    counter.begin(sample.content_type)
    for chunk in chunks:
        counter.feed(chunk)
    return counter.usage()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(body)]
    return [body[start:end] for start, end in itertools.pairwise(points)]


@pytest.mark.parametrize("sample", SAMPLES, ids=[sample.name for sample in SAMPLES])
@given(data=st.data())
def test_usage_is_the_same_wherever_the_chunks_break(sample: Sample, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(sample.body)), max_size=30))
    assert count(sample, split(sample.body, cuts)) == sample.usage


SHORT_SAMPLES = [sample for sample in SAMPLES if len(sample.body) < HEAD_BYTES]


@pytest.mark.parametrize("sample", SHORT_SAMPLES, ids=[sample.name for sample in SHORT_SAMPLES])
def test_usage_from_one_byte_at_a_time(sample: Sample) -> None:
    chunks = [sample.body[index : index + 1] for index in range(len(sample.body))]
    assert count(sample, chunks) == sample.usage


@given(content_type=st.sampled_from([SSE, JSON]), chunks=st.lists(st.binary(), max_size=8))
def test_any_bytes_are_counted_or_not_but_never_raise(
    content_type: str, chunks: list[bytes]
) -> None:
    counter = UsageCounter()
    counter.begin(content_type)
    for chunk in [*chunks, b"data: " + b"[" * 100000 + b"\n\n", b"{" * 100000]:
        counter.feed(chunk)
    usage = counter.usage()
    assert usage is None or usage.total_tokens >= usage.prompt_tokens + usage.completion_tokens


def test_long_samples_are_longer_than_what_is_kept() -> None:
    long = [sample for sample in SAMPLES if sample.name.startswith("long")]
    assert long and all(len(sample.body) > 2 * (HEAD_BYTES + TAIL_BYTES) for sample in long)


def test_a_stream_cut_short_counts_what_it_sent() -> None:
    body = _sse(*LLAMA_SERVER_PIECES)[:-2]  # no blank line after the last event
    assert count(Sample("cut", SSE, body, None), [body]) == NO_PROMPT_FOUR


def test_a_huge_event_is_skipped_in_bounded_memory() -> None:
    piece = _sse(_llama_server_chunk({"content": "x"}))
    huge = b"data: " + b'{"x":"' + b"y" * (8 * 1024 * 1024) + b'"}\n\n'
    counter = UsageCounter()
    counter.begin(SSE)
    counter.feed(piece)
    tracemalloc.start()
    try:
        for start in range(0, len(huge), 65536):
            counter.feed(huge[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    counter.feed(piece)
    assert peak < 4 * EVENT_BYTES
    assert counter.usage() == Usage(prompt_tokens=0, completion_tokens=2, total_tokens=2)


def test_a_long_json_answer_is_kept_in_bounded_memory() -> None:
    sample = next(
        sample for sample in SAMPLES if sample.name == "long embeddings answer, usage last"
    )
    body = sample.body * 20  # not JSON any more, but the tail still ends with the usage
    counter = UsageCounter()
    counter.begin(JSON)
    tracemalloc.start()
    try:
        for start in range(0, len(body), 65536):
            counter.feed(body[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(body) > 8 * 1024 * 1024
    assert peak < 4 * (HEAD_BYTES + TAIL_BYTES)
    assert counter.usage() == sample.usage


def test_nothing_is_counted_before_the_headers() -> None:
    counter = UsageCounter()
    counter.feed(LLAMA_SERVER_CHAT)
    assert counter.usage() is None


# ---- through a real router and a real child ----------------------------------------------------

RECORDER = """
import json
from router import hookimpl

@hookimpl
def request_finished(model, principal, usage, duration_s, status):
    with open({path!r}, "a") as file:
        counted = None if usage is None else list(vars(usage).values())
        file.write(json.dumps(counted) + "\\n")
"""


def recorded(path: Path, n: int) -> list[list[int] | None]:
    """The first ``n`` usages the router reported (it reports just after the last byte)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines[:n]]
        time.sleep(0.05)
    raise AssertionError(f"the router reported {path.read_text()!r}, not {n} usages")


def test_the_router_reports_the_usage_of_every_kind_of_answer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny.gguf")
    record = tmp_path / "usage.jsonl"
    plugin = tmp_path / "recorder.py"
    plugin.write_text(RECORDER.format(path=str(record)))
    ignore_eos = {"ignore_eos": True}
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "hi"}
    ]
    with running_router(models, "--plugin", str(plugin)) as router:
        client = openai.OpenAI(base_url=f"{router.base_url}/v1", api_key="none", timeout=60)
        answer = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=6, extra_body=ignore_eos
        )
        assert answer.usage is not None
        expected: list[list[int] | None] = [
            [answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens]
        ]
        assert recorded(record, 1) == expected

        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=6, stream=True,
                stream_options={"include_usage": True}, extra_body=ignore_eos,
            )
        )  # fmt: skip
        usage = chunks[-1].usage
        assert usage is not None
        expected.append([usage.prompt_tokens, usage.completion_tokens, usage.total_tokens])
        assert recorded(record, 2) == expected

        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=6, stream=True, extra_body=ignore_eos
            )
        )
        # No usage asked: the count is exact all the same (the last chunk's timings).
        expected.append(expected[-1])
        assert recorded(record, 3) == expected

        texts = list(
            client.completions.create(
                model="tiny", prompt="x", max_tokens=6, stream=True, extra_body=ignore_eos
            )
        )
        assert any(chunk.choices and chunk.choices[0].text for chunk in texts)
        last = recorded(record, 4)[-1]
        assert last is not None and last[0] > 0 and last[1] == 6 and last[2] == last[0] + 6


def test_chunks_are_read_in_batches_and_all_of_them_count() -> None:
    # A stream's chunks are kept until a batch is full (its memory bounded), and the usage
    # asked at any moment counts every chunk fed so far, the last partial batch too.
    counter = UsageCounter()
    counter.begin("text/event-stream")
    event = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
    for fed in range(1, 3 * BATCH_CHUNKS + 5):
        counter.feed(event)
        assert len(counter._unread) < BATCH_CHUNKS
        if fed % 7 == 0:
            usage = counter.usage()
            assert usage is not None and usage.completion_tokens == fed
    counter.feed(b"x" * BATCH_BYTES)  # a batch's worth of bytes in one chunk: read at once
    assert counter._unread == []
    usage = counter.usage()
    assert usage is not None and usage.completion_tokens == 3 * BATCH_CHUNKS + 4
