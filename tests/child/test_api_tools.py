"""Tool calls and thoughts in the Responses and Anthropic shapes, through a real router, with
the official clients. They are read by the chat route's reader: a required call is
constrained by the tools' grammar, so even random weights make a valid one; the thinking
model's template opens ``<think>``, which random weights never close, so all it writes is
thought."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.processes import RouterProcess, running_router
from tests.tiny_models import CHATML_TEMPLATE, write_tiny_llama

THINKING_TEMPLATE = CHATML_TEMPLATE.replace(
    "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"
)
CITIES = ["Paris", "Rome", "Oslo"]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": CITIES}},
    "required": ["city"],
}
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    assert THINKING_TEMPLATE != CHATML_TEMPLATE
    folder = tmp_path_factory.mktemp("api-tools")
    write_tiny_llama(folder / "plain.gguf")
    write_tiny_llama(folder / "thinking.gguf", chat_template=THINKING_TEMPLATE)
    with running_router(folder, "-c", "1024") as running:
        yield running


@pytest.fixture
def claude(router: RouterProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=router.base_url, api_key="x", max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture
def oai(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=router.openai_base_url, api_key="x", max_retries=0, timeout=60
    ) as client:
        yield client


ANTHROPIC_TOOLS: Any = [{"name": "get_weather", "description": "weather", "input_schema": SCHEMA}]
RESPONSES_TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]


def test_a_required_call_is_a_tool_use_block(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="plain",
        messages=[{"role": "user", "content": ASK}],
        max_tokens=200,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].id
    assert calls[0].input in [{"city": city} for city in CITIES]


def test_a_streamed_call_is_a_tool_use_block_with_its_input(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="plain",
        messages=[{"role": "user", "content": ASK}],
        max_tokens=200,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [event for event in events if event.type == "content_block_start"]
    stops = [event for event in events if event.type == "content_block_stop"]
    assert [event.index for event in starts] == list(range(len(starts)))
    assert [event.index for event in stops] == [event.index for event in starts]
    assert starts[-1].content_block.type == "tool_use"
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use"
    assert call.input in [{"city": city} for city in CITIES]


def test_a_required_call_is_a_function_call_item(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="plain", input=ASK, tools=RESPONSES_TOOLS, tool_choice="required"
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].call_id
    assert json.loads(calls[0].arguments)["city"] in CITIES


def test_a_streamed_call_is_a_function_call_item(oai: openai.OpenAI) -> None:
    with oai.responses.stream(
        model="plain", input=ASK, tools=RESPONSES_TOOLS, tool_choice="required"
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1
    assert json.loads(calls[0].arguments)["city"] in CITIES


def test_a_call_and_its_result_make_a_history(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="plain",
        messages=[
            {"role": "user", "content": ASK},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ],
        max_tokens=4,
        tools=ANTHROPIC_TOOLS,
    )
    assert message.type == "message"


def test_thoughts_are_a_thinking_block(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="thinking", messages=[{"role": "user", "content": "Why?"}], max_tokens=12
    )
    assert [block.type for block in message.content] == ["thinking"]
    assert message.content[0].thinking  # type: ignore[union-attr]
    with claude.messages.stream(
        model="thinking", messages=[{"role": "user", "content": "Why?"}], max_tokens=12
    ) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking"]
    assert final.content[0].thinking  # type: ignore[union-attr]


def test_thoughts_are_a_reasoning_item(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="thinking", input="Why?", max_output_tokens=12)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text  # type: ignore[union-attr,index]
    assert response.output_text == ""
    with oai.responses.stream(model="thinking", input="Why?", max_output_tokens=12) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert [item.type for item in final.output] == ["reasoning", "message"]
