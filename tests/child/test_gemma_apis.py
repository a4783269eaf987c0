"""Gemma 3 270M answers through the router in the Responses and Anthropic shapes: a real
answer's text arrives whole in each, streamed or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.processes import RouterProcess, running_router

pytestmark = pytest.mark.gemma

# The base model answers well only after a few examples of the turns it is to take.
TURNS = [
    {"role": "user", "content": "Capital of Italy?"},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "Capital of Spain?"},
    {"role": "assistant", "content": "Madrid."},
    {"role": "user", "content": "Capital of France?"},
]


@pytest.fixture(scope="module")
def router(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("gemma-apis")
    (folder / "gemma.gguf").symlink_to(gemma_model)
    with running_router(folder, "-c", "2048", "--threads", "2") as router:
        yield router


def test_gemma_answers_in_the_responses_shape(router: RouterProcess) -> None:
    with openai.OpenAI(base_url=router.openai_base_url, api_key="x", max_retries=0) as client:
        response = client.responses.create(
            model="gemma", input=TURNS, max_output_tokens=4, temperature=0
        )
        streamed = "".join(
            event.delta
            for event in client.responses.create(
                model="gemma", input=TURNS, max_output_tokens=4, temperature=0, stream=True
            )
            if event.type == "response.output_text.delta"
        )
    assert "Paris" in response.output_text, response.output_text
    assert streamed == response.output_text


def test_gemma_answers_in_the_anthropic_shape(router: RouterProcess) -> None:
    with anthropic.Anthropic(base_url=router.base_url, api_key="x", max_retries=0) as client:
        message = client.messages.create(
            model="gemma",
            messages=TURNS,  # type: ignore[arg-type]
            max_tokens=4,
            extra_body={"temperature": 0},
        )
        with client.messages.stream(
            model="gemma",
            messages=TURNS,  # type: ignore[arg-type]
            max_tokens=4,
            extra_body={"temperature": 0},
        ) as stream:
            streamed = stream.get_final_message()
    text = message.content[0].text  # type: ignore[union-attr]
    assert "Paris" in text, text
    assert streamed.content[0].text == text  # type: ignore[union-attr]
    assert streamed.stop_reason == message.stop_reason
