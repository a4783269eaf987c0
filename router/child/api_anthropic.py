"""Anthropic's Messages API (``/v1/messages``), run as the chat request it converts to.

The conversion follows llama-server's (``server_chat_convert_anthropic_to_oai``): ``system``
becomes a system message, content blocks become chat parts (``tool_use`` blocks the
assistant's tool calls, ``tool_result`` blocks tool messages), ``stop_sequences`` is ``stop``.
Two points follow Anthropic rather than llama-server: ``max_tokens`` is required (a 400
without it, which llama-server fills with 4096), and a reply cut by a stop sequence says
``stop_reason: "stop_sequence"`` and which one. The output is read as the chat route reads
it (``api_output.py``): thoughts are a ``thinking`` block, tool calls ``tool_use`` blocks.
Errors on these routes take Anthropic's shape (``errors.shaped_for``), here and in the router.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator
from typing import Any

import trio
from quart import Response
from quart_trio import QuartTrio

from router.child import generations
from router.child.api_output import (
    Kind,
    OutputReader,
    Part,
    WholeOutput,
    call_input,
    read_whole,
)
from router.child.api_prompt import input_tokens
from router.child.engine import Finished, FinishReason, Piece
from router.child.parsing import parse_chat
from router.child.responses import StreamItem, sse_named_event
from router.child.service import ModelService
from router.child.tool_formats import ToolCall
from router.child.tools import ChatPlan
from router.edge.jsonbody import kind_of, parse_json_object
from router.edge.web import json_response, request_body
from router.errors import InvalidField, RouterError, sse_error_event

MESSAGES_PATH = "/v1/messages"
# Fields that pass on to the chat request as they are (llama-server's list).
_PASSED_ON = ("temperature", "top_p", "top_k", "stream", "chat_template_kwargs")


async def create_message(
    service: ModelService, model_id: str, body: dict[str, Any], nursery: trio.Nursery
) -> generations.Answer:
    """``/v1/messages``: the message, or its events (run as tasks of ``nursery``). Both the
    Quart route (``app.py``) and the raw fast path in front of it call this.

    Raises RouterError for anything wrong with the request or the model.
    """
    parsed = parse_chat(to_chat(body, needs_max_tokens=True), defaults=service.request_defaults)
    plan, requests = await generations.planned_chat(service, parsed)
    message_id = f"msg_{secrets.token_hex(24)}"
    if not parsed.settings.stream:
        [(pieces, finished)] = await service.complete(requests)
        output = read_whole(plan, "".join(piece.text for piece in pieces))
        message = _message(message_id, model_id, _blocks(output), _usage(finished))
        return {**message, **_stop(finished, has_calls=bool(output.calls))}
    channel = await service.start_stream(nursery, requests)
    n_prompt = len(requests[0].prompt_tokens)
    start = _message(message_id, model_id, [], _usage(None, n_prompt))
    return _events(channel, start, plan)


def register_anthropic_routes(app: QuartTrio, service: ModelService) -> None:
    """``/v1/messages/count_tokens``; ``app.py`` serves ``/v1/messages`` itself, as the fast
    path in front of it does."""

    @app.post(f"{MESSAGES_PATH}/count_tokens")
    async def count_tokens() -> Response:
        body = parse_json_object(await request_body())
        parsed = parse_chat(to_chat(body, needs_max_tokens=False))
        return json_response({"input_tokens": await input_tokens(service, parsed)})


# ---- the request -----------------------------------------------------------------------------


def to_chat(body: dict[str, Any], *, needs_max_tokens: bool) -> dict[str, Any]:
    """The chat request body an Anthropic request stands for.

    Raises InvalidField, naming the Anthropic field at fault.
    """
    chat: dict[str, Any] = {name: body[name] for name in _PASSED_ON if name in body}
    if needs_max_tokens:
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidField(
                "max_tokens",
                "is required: the most tokens the reply may have, a positive integer"
                + (f" (got {max_tokens!r})" if max_tokens is not None else ""),
            )
        chat["max_tokens"] = max_tokens
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _system_text(system)})
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise InvalidField("messages", "is required and must be a list of messages")
    for index, message in enumerate(raw):
        messages += _messages(message, f"messages[{index}]")
    chat["messages"] = messages
    stop_sequences = body.get("stop_sequences")
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list) or not all(
            isinstance(stop, str) for stop in stop_sequences
        ):
            raise InvalidField("stop_sequences", "must be a list of strings")
        chat["stop"] = stop_sequences
    tools = body.get("tools")
    if tools is not None:
        chat["tools"] = _tools(tools)
    tool_choice = _tool_choice(body.get("tool_choice"))
    if tool_choice is not None:
        chat["tool_choice"] = tool_choice
    return chat


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(block, dict) and isinstance(block.get("text"), str) for block in system
    ):
        return "".join(block["text"] for block in system if block.get("type") == "text")
    raise InvalidField("system", "must be a string or a list of text blocks")


def _messages(message: Any, where: str) -> list[dict[str, Any]]:
    """The chat messages of one Anthropic message: itself, then a tool message for each of
    its ``tool_result`` blocks."""
    if not isinstance(message, dict):
        raise InvalidField(where, f"must be an object, not {kind_of(message)}")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidField(f"{where}.role", "must be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidField(f"{where}.content", "must be a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise InvalidField(f"{block_where}.text", "is required and must be a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, block_where))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
        elif kind == "tool_result":
            tool_results.append(_tool_result(block, block_where))
        elif kind not in ("thinking", "redacted_thinking"):  # earlier reasoning: not a prompt
            raise InvalidField(
                f"{block_where}.type",
                f"is {kind!r}; this server takes 'text', 'image', 'tool_use' and "
                "'tool_result' blocks",
            )
    converted: list[dict[str, Any]] = []
    if parts or tool_calls:
        chat_message: dict[str, Any] = {"role": role, "content": parts or ""}
        if tool_calls:
            chat_message["tool_calls"] = tool_calls
        converted.append(chat_message)
    return converted + tool_results


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An image block as chat's ``image_url`` part (the chat request decides whether the
    model takes images)."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media_type = source.get("media_type", "image/jpeg")
        url = f"data:{media_type};base64,{source.get('data', '')}"
    elif isinstance(source, dict) and source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise InvalidField(f"{where}.source", "must be a base64 or url image source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidField(f"{where}.content[{index}]", "must be a text block")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    elif not isinstance(content, str):
        raise InvalidField(f"{where}.content", "must be a string or a list of text blocks")
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": content}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise InvalidField("tools", "must be a list of tool objects")
    return [
        {
            "type": "function",
            "function": {
                "name": tool.get("name", ""),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema", {}),
            },
        }
        for tool in tools
    ]


def _tool_choice(choice: Any) -> str | dict[str, Any] | None:
    """Anthropic's ``tool_choice`` as chat's: ``auto``, ``none``, ``required`` for ``any``,
    or the named function for ``tool``."""
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return str(kind)
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidField("tool_choice", "must be an object of type 'auto', 'any', 'tool' or 'none'")


# ---- the answer ------------------------------------------------------------------------------


def _message(
    message_id: str, model_id: str, content: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


def _usage(finished: Finished | None, n_prompt: int = 0) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` leaves out those read from the prompt cache. Before
    the generation ends (a stream's first event), the cache's share is not known yet."""
    if finished is None:
        return {"input_tokens": n_prompt, "cache_read_input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": finished.prompt_tokens - finished.cached_tokens,
        "cache_read_input_tokens": finished.cached_tokens,
        "output_tokens": finished.completion_tokens,
    }


def _stop(finished: Finished, *, has_calls: bool) -> dict[str, Any]:
    """``stop_reason`` and ``stop_sequence`` for how the generation ended."""
    if has_calls:
        return {"stop_reason": "tool_use", "stop_sequence": None}
    if finished.stop_word is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": finished.stop_word}
    reason = "end_turn" if finished.reason is FinishReason.STOP else "max_tokens"
    return {"stop_reason": reason, "stop_sequence": None}


def _blocks(output: WholeOutput) -> list[dict[str, Any]]:
    """A whole reply's content blocks: its thoughts, its text, its tool calls (each only if
    there is one)."""
    blocks: list[dict[str, Any]] = []
    if output.reasoning:
        blocks.append({"type": "thinking", "thinking": output.reasoning, "signature": ""})
    if output.text:
        blocks.append({"type": "text", "text": output.text})
    blocks += [_tool_use(call) for call in output.calls]
    return blocks


def _tool_use(call: ToolCall, *, is_whole: bool = True) -> dict[str, Any]:
    """A call's block; streamed, its input comes in a delta after it."""
    return {
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": call_input(call) if is_whole else {},
    }


# A streamed block of each kind as it opens, and its deltas' shape.
_OPENING: dict[Kind, dict[str, Any]] = {
    "reasoning": {"type": "thinking", "thinking": "", "signature": ""},
    "text": {"type": "text", "text": ""},
}
_DELTA_FIELD: dict[Kind, tuple[str, str]] = {
    "reasoning": ("thinking_delta", "thinking"),
    "text": ("text_delta", "text"),
}


async def _events(
    channel: trio.MemoryReceiveChannel[StreamItem], start: dict[str, Any], plan: ChatPlan
) -> AsyncGenerator[bytes, None]:
    """Anthropic's event sequence: message_start, ping, then content blocks, each opened
    (content_block_start), filled (content_block_delta) and closed (content_block_stop) in
    turn: thoughts, text, and the tool calls once the output has ended; then message_delta
    with the stop reason and usage, and message_stop. A failure ends the stream with an
    ``error`` event in Anthropic's shape, which its clients raise."""
    index = -1  # the open block's
    kind: Kind | None = None  # the open block's, or None when none is open

    def event(name: str, **fields: Any) -> bytes:
        return sse_named_event(name, {"type": name, **fields})

    def close() -> list[bytes]:
        nonlocal kind
        closing, kind = kind, None
        if closing is None:
            return []
        ending = [event("content_block_stop", index=index)]
        if closing == "reasoning":  # Anthropic's clients expect a signature; there is none
            signature = {"type": "signature_delta", "signature": ""}
            ending.insert(0, event("content_block_delta", index=index, delta=signature))
        return ending

    def put(parts: list[Part]) -> list[bytes]:
        nonlocal index, kind
        events = []
        for part_kind, text in parts:
            if part_kind != kind:
                events += close()
                index, kind = index + 1, part_kind
                events.append(
                    event("content_block_start", index=index, content_block=_OPENING[part_kind])
                )
            delta_type, field = _DELTA_FIELD[part_kind]
            delta = {"type": delta_type, field: text}
            events.append(event("content_block_delta", index=index, delta=delta))
        return events

    reader = OutputReader(plan)
    with channel:
        yield event("message_start", message=start)
        yield event("ping")
        item: StreamItem
        async for item in channel:
            if isinstance(item, RouterError):
                yield sse_error_event(item, MESSAGES_PATH)
                return
            _, value = item
            if isinstance(value, Piece):
                for chunk in put(reader.feed(value.text)):
                    yield chunk
                continue
            last, calls = reader.finish()
            for chunk in [*put(last), *close()]:
                yield chunk
            for call in calls:
                index += 1
                block = _tool_use(call, is_whole=False)
                arguments = {"type": "input_json_delta", "partial_json": call.arguments}
                yield event("content_block_start", index=index, content_block=block)
                yield event("content_block_delta", index=index, delta=arguments)
                yield event("content_block_stop", index=index)
            # The whole usage, as Anthropic's API now sends it here: the router counts it.
            stop = _stop(value, has_calls=bool(calls))
            yield event("message_delta", delta=stop, usage=_usage(value))
            yield event("message_stop")
