"""Gemma 3 270M, a model too small to call tools on its own, returns valid calls when one is
required: its template knows no tools (the generic JSON format), and the output is
constrained by a grammar built from the tools' schemas. Through a real router, with the
official openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.processes import RouterProcess, running_router

pytestmark = pytest.mark.gemma

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
STOCK = {
    "type": "function",
    "function": {
        "name": "get_stock_price",
        "description": "Get the price of a stock",
        "parameters": {
            "type": "object",
            "properties": {"ticker": {"type": "string", "maxLength": 8}},
            "required": ["ticker"],
        },
    },
}
TOOLS: list[Any] = [WEATHER, STOCK]
ASK: list[Any] = [{"role": "user", "content": "What is the weather like in Paris, in celsius?"}]


@pytest.fixture(scope="module")
def router(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("gemma-tools")
    (folder / "gemma.gguf").symlink_to(gemma_model)
    with running_router(folder, "-c", "2048", "--threads", "2") as running:
        yield running


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.openai_base_url, api_key="x", max_retries=0, timeout=300)


def check_weather_call(name: str, arguments: str) -> None:
    assert name == "get_weather"
    parsed = json.loads(arguments)
    assert set(parsed) == {"city", "unit"}
    assert isinstance(parsed["city"], str) and len(parsed["city"]) <= 40
    assert "Paris" in parsed["city"]  # greedy: the model reads the question, not just the schema
    assert parsed["unit"] in ("celsius", "fahrenheit")


def test_gemma_returns_a_valid_required_call(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="gemma",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=120,
    )
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    check_weather_call(calls[0].function.name, calls[0].function.arguments)


def test_gemma_calls_the_named_function_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gemma",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=120,
        stream=True,
    )
    name, arguments, reasons = "", "", []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.function and delta.function.name:
                    name += delta.function.name
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
    assert reasons == ["tool_calls"]
    check_weather_call(name, arguments)
