"""The Responses and Anthropic requests as the chat requests they stand for, errors in each
API's shape, and the router counting their answers' tokens: without processes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from router.child import api_anthropic, api_responses
from router.child.engine import Finished, FinishReason, Piece
from router.child.responses import StreamItem
from router.child.stops import StopScanner
from router.child.tools import ChatPlan
from router.edge.usage import UsageCounter
from router.errors import InvalidField, ModelNotFound, QueueFull, error_body, sse_error_event
from router.hooks.plugin_types import Usage

# ---- Responses ---------------------------------------------------------------------------------


def test_responses_items_become_one_chat_turn_each() -> None:
    chat = api_responses.to_chat(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Sunny."}],
                },
            ],
            "max_output_tokens": 5,
            "top_k": 3,
            "store": True,
        }
    )
    assert chat == {
        "model": "m",
        "top_k": 3,  # llama-server's extras pass on
        "max_tokens": 5,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
    }


def test_responses_tools_and_text_format_become_chats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = api_responses.to_chat(
        {
            "input": "hi",
            "tools": [
                {"type": "function", "name": "f", "parameters": schema},
                {"type": "web_search"},
            ],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema}},
        }
    )
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"schema": schema}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"type": "computer_call"}]}, "input[0].type"),
        ({"input": "hi", "instructions": ["x"]}, "instructions"),
        ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_a_bad_responses_field_is_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        api_responses.to_chat(body)
    assert caught.value.param == field


# ---- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_blocks_become_chat_messages() -> None:
    chat = api_anthropic.to_chat(
        {
            "model": "m",
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm"},
                        {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Oslo"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    ],
                },
            ],
            "max_tokens": 9,
            "stop_sequences": ["\n\n"],
            "temperature": 0.5,
            "metadata": {"user_id": "u"},
            "tools": [{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        },
        needs_max_tokens=True,
    )
    assert chat == {
        "temperature": 0.5,
        "max_tokens": 9,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "w", "arguments": json.dumps({"city": "Oslo"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        ],
        "stop": ["\n\n"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "w",
                    "description": "weather",
                    "parameters": {"type": "object"},
                },
            }
        ],
        "tool_choice": "required",
    }


def test_max_tokens_is_required_to_generate_but_not_to_count() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidField) as caught:
        api_anthropic.to_chat(body, needs_max_tokens=True)
    assert caught.value.param == "max_tokens"
    assert "max_tokens" not in api_anthropic.to_chat(body, needs_max_tokens=False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "doc"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [], "stop_sequences": "\n"}, "stop_sequences"),
        ({"messages": [], "system": 3}, "system"),
        ({"messages": [], "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ],
)
def test_a_bad_anthropic_field_is_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        api_anthropic.to_chat(body, needs_max_tokens=False)
    assert caught.value.param == field


def test_the_stop_scanner_says_which_stop_string_it_found() -> None:
    scanner = StopScanner(["lo", "ello", "xyz"])
    assert scanner.feed("he") == ("h", False)
    assert scanner.hit is None
    assert scanner.feed("llo") == ("", True)  # "ello" and "lo" end together: the longest
    assert scanner.hit == "ello"


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_errors_on_anthropics_routes_take_anthropics_shape(path: str) -> None:
    assert error_body(ModelNotFound("no model 'x'"), path) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no model 'x'"},
    }
    assert error_body(QueueFull("busy"), path)["error"]["type"] == "rate_limit_error"
    assert error_body(InvalidField("max_tokens", "is required"), path)["error"] == {
        "type": "invalid_request_error",
        "message": "'max_tokens' is required",
    }


def test_errors_elsewhere_keep_openais_shape() -> None:
    assert error_body(ModelNotFound("no model 'x'"), "/v1/chat/completions") == {
        "error": {"message": "no model 'x'", "type": "not_found_error", "code": 404}
    }


def test_a_stream_error_on_anthropics_route_is_its_error_event() -> None:
    event = sse_error_event(QueueFull("busy"), "/v1/messages")
    name, data = event.decode().strip().split("\n")
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: "))["error"]["type"] == "rate_limit_error"
    assert sse_error_event(QueueFull("busy")).startswith(b"data: {")


# ---- usage, as the router counts it ------------------------------------------------------------

PLAN = ChatPlan(prompt="")  # output read as text alone
FINISHED = Finished(FinishReason.STOP, prompt_tokens=7, completion_tokens=2, cached_tokens=3)


async def _stream_of(events: Any) -> bytes:
    send, receive = trio.open_memory_channel[StreamItem](10)
    for item in ((0, Piece("a")), (0, Piece("b")), (0, FINISHED)):
        send.send_nowait(item)
    send.close()
    return b"".join([event async for event in events(receive)])


def _counted(content_type: str, body: bytes) -> Usage | None:
    counter = UsageCounter()
    counter.begin(content_type)
    counter.feed(body)
    return counter.usage()


async def test_the_router_counts_a_streamed_messages_tokens() -> None:
    start = api_anthropic._message("msg_1", "m", [], api_anthropic._usage(None, 7))
    body = await _stream_of(lambda channel: api_anthropic._events(channel, start, PLAN))
    assert _counted("text/event-stream", body) == Usage(7, 2, 9)


async def test_the_router_counts_a_streamed_responses_tokens() -> None:
    ids = api_responses.ResponseIds(model="m")
    body = await _stream_of(lambda channel: api_responses._events(channel, ids, {}, PLAN))
    assert _counted("text/event-stream", body) == Usage(7, 2, 9)


def test_the_router_counts_whole_answers_of_both_apis() -> None:
    message = {"usage": api_anthropic._usage(FINISHED)}
    assert _counted("application/json", json.dumps(message).encode()) == Usage(7, 2, 9)
    response = {"usage": api_responses._usage(FINISHED)}
    assert _counted("application/json", json.dumps(response).encode()) == Usage(7, 2, 9)
