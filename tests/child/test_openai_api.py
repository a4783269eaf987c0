"""The child's OpenAI endpoints, through the official openai client, on a real tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.processes import ChildProcess


@pytest.fixture
def client(shared_child: ChildProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=shared_child.openai_base_url, api_key="unused", max_retries=0
    ) as client:
        yield client


def test_models_lists_the_alias(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == ["tiny"]


def test_completion_returns_text_and_exact_usage(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7
    assert completion.usage.prompt_tokens == 6  # <s> + 5 bytes


def test_greedy_completion_is_deterministic(client: openai.OpenAI) -> None:
    texts = {
        client.completions.create(model="tiny", prompt="abc", max_tokens=12, temperature=0)
        .choices[0]
        .text
        for _ in range(3)
    }
    assert len(texts) == 1


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return (
            client.completions.create(
                model="tiny",
                prompt="abc",
                max_tokens=16,
                temperature=1.5,
                seed=seed,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_chat_completion(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 5
    # chatml: "<s>" + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" in bytes
    assert chat.usage.prompt_tokens == 1 + len(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_streamed_chat_matches_the_unstreamed_answer(client: openai.OpenAI) -> None:
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "stream please"}],
        "max_tokens": 20,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**request).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finals) == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )


def test_streamed_completion_ends_with_done(shared_child: ChildProcess) -> None:
    with httpx.stream(
        "POST",
        f"{shared_child.base_url}/v1/completions",
        json={"prompt": "x", "max_tokens": 4, "stream": True, "ignore_eos": True},
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    finish = json.loads(events[-2][len("data: ") :])
    assert finish["choices"][0]["finish_reason"] == "length"
    # Up to one event per token: a token holding half a UTF-8 character waits for the next.
    assert 1 <= len(events) - 2 <= 4


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    free = (
        client.completions.create(
            model="tiny", prompt="q", max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    stop = free[5:7]
    assert stop
    stopped = client.completions.create(
        model="tiny",
        prompt="q",
        max_tokens=24,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_logit_bias_forces_a_token(client: openai.OpenAI) -> None:
    token_for_a = 4 + ord("a")  # after <unk>, <s>, </s> and the SentencePiece space
    text = (
        client.completions.create(
            model="tiny",
            prompt="q",
            max_tokens=5,
            temperature=0,
            logit_bias={str(token_for_a): 100},
        )
        .choices[0]
        .text
    )
    assert text == "aaaaa"


def test_json_schema_response_format_constrains_output(client: openai.OpenAI) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    text = (
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "json"}],
            max_tokens=40,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        )
        .choices[0]
        .message.content
    )
    assert text is not None
    assert isinstance(json.loads(text)["ok"], bool)


def test_tokenize_detokenize_round_trip(shared_child: ChildProcess) -> None:
    text = "Grüße, world! 12"
    tokens = httpx.post(f"{shared_child.base_url}/tokenize", json={"content": text}).json()[
        "tokens"
    ]
    assert all(isinstance(token, int) for token in tokens)
    back = httpx.post(f"{shared_child.base_url}/detokenize", json={"tokens": tokens}).json()
    assert back["content"] == text


def test_tokenize_with_pieces_gives_bytes_for_partial_utf8(shared_child: ChildProcess) -> None:
    pieces = httpx.post(
        f"{shared_child.base_url}/tokenize", json={"content": "é", "with_pieces": True}
    ).json()["tokens"]
    assert [piece["piece"] for piece in pieces] == [[0xC3], [0xA9]]


def test_props_reports_model_and_template(shared_child: ChildProcess) -> None:
    props = httpx.get(f"{shared_child.base_url}/props").json()
    assert props["model_path"].endswith("tiny.gguf")
    assert props["default_generation_settings"]["n_ctx"] == 512
    assert props["total_slots"] == 1
    assert props["chat_template_source"] == "gguf"
    assert "<|im_start|>" in props["chat_template"]


def test_health(shared_child: ChildProcess) -> None:
    response = httpx.get(f"{shared_child.base_url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
