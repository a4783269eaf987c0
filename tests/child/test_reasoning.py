"""Thoughts in ``reasoning_content`` (``--reasoning-format``), through a real child.

The tiny model's template ends its generation prompt inside ``<think>`` (as DeepSeek R1's
and Qwen 3's do), and random weights never write ``</think>``: so everything the model
writes is thought, unless the format says to leave it in the content.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.processes import ChildProcess, running_child
from tests.tiny_models import CHATML_TEMPLATE

THINKING_TEMPLATE = CHATML_TEMPLATE.replace(
    "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"
)
ASK: list[Any] = [{"role": "user", "content": "Why?"}]


@pytest.fixture(scope="module")
def child(tiny_model: Path) -> Iterator[ChildProcess]:
    assert THINKING_TEMPLATE != CHATML_TEMPLATE
    with running_child(
        tiny_model, "--ctx-size", "512", "--alias", "tiny", "--chat-template", THINKING_TEMPLATE
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(child: ChildProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=child.openai_base_url, api_key="x", max_retries=0, timeout=60)


def test_thoughts_go_to_reasoning_content(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=16, seed=1)
    message = chat.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert isinstance(reasoning, str) and reasoning
    assert message.content == ""


def test_thoughts_stream_as_reasoning_deltas(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=16, seed=1)
    streamed: list[str] = []
    for chunk in client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=16, seed=1, stream=True
    ):
        for choice in chunk.choices:
            assert not choice.delta.content
            streamed.append(getattr(choice.delta, "reasoning_content", None) or "")
    assert "".join(streamed) == getattr(whole.choices[0].message, "reasoning_content", None)


def test_reasoning_format_none_leaves_thoughts_in_the_content(client: openai.OpenAI) -> None:
    thought = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=16, seed=1)
    raw = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        max_tokens=16,
        seed=1,
        extra_body={"reasoning_format": "none"},
    )
    message = raw.choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    assert message.content == getattr(thought.choices[0].message, "reasoning_content", None)
