"""Tool calls through a real router and real children, with the official openai client.

Two tiny random models: one whose chat template (chatml) knows no tools, so the generic JSON
format applies, and one whose template writes Hermes' ``<tool_call>`` tags. Random weights
write anything; a required call is constrained by a grammar built from the tools' schemas, so
it must come out valid all the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.processes import RouterProcess, running_router
from tests.tiny_models import CHATML_TEMPLATE, write_tiny_llama

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for tool in tools %} {{ tool.function.name }}"
    "{% endfor %}. Call one as <tool_call>{json}</tool_call>.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% for call in message.tool_calls or [] %}<tool_call>{{ call.function | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CITIES = ["Paris", "Rome", "Oslo"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": CITIES}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["utc", "local"]}},
            "required": ["zone"],
        },
    },
}
TOOLS: list[Any] = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("tools")
    write_tiny_llama(folder / "plain.gguf", chat_template=CHATML_TEMPLATE)
    write_tiny_llama(folder / "hermes.gguf", chat_template=HERMES_TEMPLATE, seed=3)
    with running_router(folder, "-c", "1024") as running:
        yield running


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.openai_base_url, api_key="x", max_retries=0, timeout=60)


def check_call(name: str, arguments: str) -> None:
    """A call of one of TOOLS whose arguments satisfy its schema."""
    parsed = json.loads(arguments)
    if name == "get_weather":
        assert parsed["city"] in CITIES
        assert set(parsed) <= {"city", "unit"}
    else:
        assert name == "get_time", name
        assert parsed == {"zone": parsed["zone"]} and parsed["zone"] in ("utc", "local")


@pytest.mark.parametrize("model", ["plain", "hermes"])
def test_a_required_call_is_a_valid_call(client: openai.OpenAI, model: str) -> None:
    for seed in range(3):
        chat = client.chat.completions.create(
            model=model,
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,
            tool_choice="required",
            max_tokens=200,
            seed=seed,
        )
        choice = chat.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert calls is not None and len(calls) == 1
        assert calls[0].id and calls[0].type == "function"
        check_call(calls[0].function.name, calls[0].function.arguments)


@pytest.mark.parametrize("model", ["plain", "hermes"])
def test_a_named_function_is_the_one_called(client: openai.OpenAI, model: str) -> None:
    chat = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=200,
    )
    calls = chat.choices[0].message.tool_calls
    assert calls is not None and [call.function.name for call in calls] == ["get_time"]
    check_call("get_time", calls[0].function.arguments)


@pytest.mark.parametrize("model", ["plain", "hermes"])
def test_a_required_call_streams_as_openai_deltas(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
        stream=True,
    )
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish_reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                if delta.id:
                    ids[delta.index] = delta.id
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
    assert finish_reasons == ["tool_calls"]
    assert list(names) == [0] and ids[0]
    check_call(names[0], arguments[0])


@pytest.mark.parametrize("model", ["plain", "hermes"])
def test_tool_choice_none_renders_no_tools(client: openai.OpenAI, model: str) -> None:
    def prompt_tokens(**tools: Any) -> int:
        chat = client.chat.completions.create(
            model=model,
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=1,
            **tools,
        )
        assert not chat.choices[0].message.tool_calls
        assert chat.usage is not None
        return chat.usage.prompt_tokens

    without = prompt_tokens()
    assert prompt_tokens(tools=TOOLS, tool_choice="none") == without
    assert prompt_tokens(tools=TOOLS) > without  # "auto": the tools are in the prompt


@pytest.mark.parametrize("model", ["plain", "hermes"])
@pytest.mark.parametrize("stream", [False, True])
def test_auto_with_a_random_model_answers_something(
    client: openai.OpenAI, model: str, stream: bool
) -> None:
    """Random text is read for calls and, not being one, comes back as content."""
    for seed in range(3):
        request: dict[str, Any] = dict(
            model=model, messages=ASK, tools=TOOLS, max_tokens=40, seed=seed, temperature=1.0
        )
        if not stream:
            chat = client.chat.completions.create(**request)
            message = chat.choices[0].message
            assert chat.choices[0].finish_reason in ("stop", "length")
            assert isinstance(message.content, str) and not message.tool_calls
            continue
        pieces = []
        for chunk in client.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                assert not choice.delta.tool_calls
        assert "".join(pieces)


@pytest.mark.parametrize("model", ["plain", "hermes"])
def test_a_history_with_calls_and_results_is_accepted(client: openai.OpenAI, model: str) -> None:
    messages: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    chat = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=4)
    assert chat.choices[0].message.role == "assistant"
    applied = httpx.post(
        f"{client.base_url}chat/completions",
        json={"model": model, "messages": messages, "max_tokens": 0},
        timeout=60,
    )
    assert applied.status_code == 200, applied.text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": TOOLS, "tool_choice": "required", "grammar": "root ::= \"x\""}, "tool_choice"),
        ({"reasoning_format": "loud"}, "reasoning_format"),
        ({"tools": TOOLS, "tool_choice": "required", "ignore_eos": True}, "ignore_eos"),
    ],
)  # fmt: skip
def test_bad_tool_fields_are_a_400_that_names_them(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="plain",
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=1,
            extra_body=fields,
        )
    body = caught.value.body
    assert isinstance(body, dict) and body.get("param") == param, body
