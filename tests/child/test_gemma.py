"""The real default model, Gemma 3 270M Q4_K_M, through the child (a quantized matmul: the
build must not use AMX, see README)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import ChildProcess, running_child

pytestmark = pytest.mark.gemma


@pytest.fixture(scope="module")
def gemma_child(gemma_model: Path) -> Iterator[ChildProcess]:
    with running_child(
        gemma_model, "--threads", "2", "--ctx-size", "2048", "--alias", "gemma"
    ) as child:
        yield child


def test_gemma_continues_a_sentence_sensibly(gemma_child: ChildProcess) -> None:
    client = openai.OpenAI(base_url=gemma_child.openai_base_url, api_key="x", max_retries=0)
    text = (
        client.completions.create(
            model="gemma", prompt="The capital of France is", max_tokens=24, temperature=0
        )
        .choices[0]
        .text
    )
    # The base model, greedy: " the capital of the country of France. It is the largest..."
    assert "France" in text, text
    words = text.split()
    assert len(words) >= 10
    assert all(word.strip(".,;:!?'\"").isalpha() for word in words), text


def test_gemma_knows_the_answer(gemma_child: ChildProcess) -> None:
    client = openai.OpenAI(base_url=gemma_child.openai_base_url, api_key="x", max_retries=0)
    text = (
        client.completions.create(
            model="gemma",
            prompt="Q: What is the capital of France?\nA:",
            max_tokens=12,
            temperature=0,
        )
        .choices[0]
        .text
    )
    assert "Paris" in text, text


def test_gemma_chat_uses_the_gemma_turn_format(gemma_child: ChildProcess) -> None:
    """This GGUF has no chat template; llama-server would fall back to chatml."""
    props = httpx.get(f"{gemma_child.base_url}/props").json()
    assert props["chat_template_source"] == "gemma"
    expected_prompt = "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    expected_tokens = httpx.post(
        f"{gemma_child.base_url}/tokenize", json={"content": expected_prompt}
    ).json()["tokens"]
    assert 106 in expected_tokens  # <end_of_turn> is one special token, not text
    client = openai.OpenAI(base_url=gemma_child.openai_base_url, api_key="x", max_retries=0)
    chat = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == len(expected_tokens)
    assert chat.choices[0].message.content
