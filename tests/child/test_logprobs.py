"""Log-probabilities: OpenAI's chat and legacy shapes, llama-server's ``n_probs``, streamed and
not, on a real tiny model through the official openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.processes import ChildProcess

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "tell me"}
]
# The tiny model's bytes are random: most of its tokens are parts of characters. Text made
# only of whole characters (these letters) lets token texts be compared with the content.
LETTERS = {"grammar": "root ::= [a-z ]+", "ignore_eos": True}


@pytest.fixture
def client(shared_child: ChildProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=shared_child.openai_base_url, api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


def _greedy_chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
        extra_body={"ignore_eos": True},
        **extra,
    )


def test_chat_logprobs_of_a_greedy_answer(client: openai.OpenAI) -> None:
    answer = _greedy_chat(client)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert answer.usage is not None
    assert len(entries) == answer.usage.completion_tokens == 12
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes is not None
        assert entry.token == bytes(entry.bytes).decode("utf-8", errors="replace")
        top = entry.top_logprobs
        assert len(top) == 5
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert all(t.logprob <= 0 for t in top)
        # Greedy: the chosen token is the likeliest one.
        assert (top[0].bytes, top[0].logprob) == (entry.bytes, entry.logprob)
    text = b"".join(bytes(entry.bytes or []) for entry in entries)
    assert text.decode("utf-8", errors="replace") == choice.message.content


def test_chat_token_texts_make_the_content(client: openai.OpenAI) -> None:
    choice = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        extra_body=LETTERS,
    ).choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert choice.message.content
    assert "".join(entry.token for entry in choice.logprobs.content) == choice.message.content
    assert all(entry.top_logprobs == [] for entry in choice.logprobs.content)  # none asked


def test_streamed_chat_logprobs_agree_with_the_whole_answer(client: openai.OpenAI) -> None:
    whole = _greedy_chat(client).choices[0]
    assert whole.logprobs is not None and whole.logprobs.content is not None
    streamed = []
    for chunk in _greedy_chat(client, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert [(e.token, e.bytes) for e in streamed] == [
        (e.token, e.bytes) for e in whole.logprobs.content
    ]
    for mine, theirs in zip(streamed, whole.logprobs.content, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
        assert [t.bytes for t in mine.top_logprobs] == [t.bytes for t in theirs.top_logprobs]


def test_each_streamed_chunk_carries_the_tokens_of_its_text(client: openai.OpenAI) -> None:
    chunks = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        extra_body=LETTERS,
    )
    n_pieces = 0
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.delta.content:
                n_pieces += 1
                assert choice.logprobs is not None and choice.logprobs.content is not None
                assert "".join(e.token for e in choice.logprobs.content) == choice.delta.content
                assert all(len(e.top_logprobs) == 2 for e in choice.logprobs.content)
    assert n_pieces == 10


def test_legacy_completion_logprobs(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny", prompt="once", max_tokens=10, temperature=0, logprobs=3, extra_body=LETTERS
    )
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert len(logprobs.tokens) == 10
    assert "".join(logprobs.tokens) == choice.text
    for token, offset in zip(logprobs.tokens, logprobs.text_offset, strict=True):
        assert choice.text[offset : offset + len(token)] == token
    for logprob, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert logprob <= 0
        # The three likeliest and the chosen one (by text: two tokens may read alike).
        assert 1 <= len(top) <= 4
        assert all(value <= 0 for value in top.values())
        assert max(top.values()) >= logprob


def test_legacy_greedy_choice_is_the_likeliest(client: openai.OpenAI) -> None:
    logprobs = (
        client.completions.create(
            model="tiny",
            prompt="once",
            max_tokens=8,
            temperature=0,
            logprobs=5,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .logprobs
    )
    assert logprobs is not None
    assert logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    for logprob, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert max(top.values()) == logprob


def test_streamed_legacy_logprobs_agree_with_the_whole_answer(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": "tiny",
        "prompt": "stream",
        "max_tokens": 9,
        "temperature": 0,
        "logprobs": 2,
        "extra_body": LETTERS,
    }
    whole = client.completions.create(**request).choices[0]
    tokens: list[str] = []
    offsets: list[int] = []
    text = ""
    for chunk in client.completions.create(**request, stream=True):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens or []
                offsets += choice.logprobs.text_offset or []
    assert whole.logprobs is not None
    assert text == whole.text
    assert tokens == whole.logprobs.tokens
    assert offsets == whole.logprobs.text_offset


def test_n_probs_is_understood_on_both_routes(shared_child: ChildProcess) -> None:
    base = shared_child.base_url
    completion = httpx.post(
        f"{base}/v1/completions",
        json={"prompt": "x", "max_tokens": 3, "n_probs": 2, "ignore_eos": True},
        timeout=60,
    ).json()
    assert len(completion["choices"][0]["logprobs"]["tokens"]) == 3
    chat = httpx.post(
        f"{base}/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 3, "n_probs": 2, "ignore_eos": True},
        timeout=60,
    ).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)


def test_logprobs_are_null_unless_asked(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert chat.choices[0].logprobs is None
    completion = client.completions.create(model="tiny", prompt="x", max_tokens=2)
    assert completion.choices[0].logprobs is None


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.mark.parametrize(
    ("route", "fields", "field"),
    [
        (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        (CHAT, {"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        (CHAT, {"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
        (CHAT, {"logprobs": 3}, "logprobs"),
        (CHAT, {"n_probs": 21}, "n_probs"),
        (COMPLETIONS, {"logprobs": 21}, "logprobs"),
        (COMPLETIONS, {"logprobs": -1}, "logprobs"),
        (COMPLETIONS, {"logprobs": True}, "logprobs"),
        (COMPLETIONS, {"logprobs": 1.5}, "logprobs"),
        (COMPLETIONS, {"n_probs": -2}, "n_probs"),
    ],
)
def test_bad_logprobs_fields_are_a_400_that_names_them(
    shared_child: ChildProcess, route: str, fields: dict[str, Any], field: str
) -> None:
    body = {"messages": MESSAGES} if route == CHAT else {"prompt": "x"}
    response = httpx.post(f"{shared_child.base_url}{route}", json={**body, **fields}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert f"'{field}'" in error["message"]


def test_prompt_logprobs_are_refused_not_left_out(shared_child: ChildProcess) -> None:
    response = httpx.post(
        f"{shared_child.base_url}/v1/completions",
        json={"prompt": "x", "echo": True, "logprobs": 1, "max_tokens": 0},
        timeout=60,
    )
    assert response.status_code == 400
    assert "echo" in json.loads(response.text)["error"]["message"]


def test_the_tokens_of_a_stop_string_are_left_out(client: openai.OpenAI) -> None:
    """The stop string is cut from the content; its tokens go from the logprobs too."""
    full = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, extra_body=LETTERS
    ).choices[0]
    assert full.message.content and len(full.message.content) > 4
    stop = full.message.content[3:5]  # met after a few tokens, greedy as the first answer
    choice = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        stop=[stop],
        extra_body=LETTERS,
    ).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.message.content or ""
    entries = choice.logprobs.content
    assert content == full.message.content[: full.message.content.index(stop)]
    assert "".join(entry.token for entry in entries).startswith(content)
    # No token that only spells the stop string: all but the last one end inside the content.
    assert len("".join(entry.token for entry in entries[:-1])) < len(content)
