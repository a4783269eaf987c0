"""OpenAI's Responses API (``/v1/responses``), run as the chat request it converts to.

As llama-server does (``server_chat_convert_responses_to_chatcmpl``): ``instructions`` and
``input`` become chat messages, ``max_output_tokens`` is ``max_tokens``, and the other fields,
llama-server's sampling extras included, pass on to the chat request, which
``generations.planned_chat`` turns into generations. The answer is a ``response`` object, or
its stream of named events (``response.created`` ... ``response.completed``, no ``[DONE]``);
its output is read as the chat route reads it (``api_output.py``): thoughts are a
``reasoning`` item, tool calls ``function_call`` items.
Nothing is stored: ``previous_response_id`` is refused, and a conversation is sent whole.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import trio
from quart import Response
from quart_trio import QuartTrio

from router.child import generations, responses
from router.child.api_output import Kind, OutputReader, Part, WholeOutput, read_whole
from router.child.api_prompt import input_tokens
from router.child.engine import Finished, Piece
from router.child.parsing import parse_chat
from router.child.responses import StreamItem, sse_named_event
from router.child.service import ModelService
from router.child.tool_formats import ToolCall
from router.child.tools import ChatPlan
from router.edge.jsonbody import kind_of, parse_json_object
from router.edge.web import json_response, request_body
from router.errors import InvalidField, RouterError

# Responses fields that have no chat counterpart, or one this conversion sets itself: they
# do not pass on to the chat request. (``n`` and log-probabilities: a response has one output,
# without them.)
_NOT_PASSED_ON = frozenset(
    {
        "input",
        "instructions",
        "max_output_tokens",
        "previous_response_id",
        "text",
        "tools",
        "reasoning",
        "include",
        "store",
        "metadata",
        "truncation",
        "background",
        "user",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "stream_options",
        "messages",
        "n",
        "n_cmpl",
        "logprobs",
        "top_logprobs",
        "n_probs",
    }
)
_INPUT_ROLES = frozenset({"user", "system", "developer"})


async def create_response(
    service: ModelService, model_id: str, body: dict[str, Any], nursery: trio.Nursery
) -> generations.Answer:
    """``/v1/responses``: the response object, or its events (run as tasks of ``nursery``).
    Both the Quart route (``app.py``) and the raw fast path in front of it call this.

    Raises RouterError for anything wrong with the request or the model.
    """
    parsed = parse_chat(to_chat(body), defaults=service.request_defaults)
    plan, requests = await generations.planned_chat(service, parsed)
    ids = ResponseIds(model=model_id)
    echo = _echoed(body)
    if not parsed.settings.stream:
        [(pieces, finished)] = await service.complete(requests)
        output = _output_items(read_whole(plan, "".join(piece.text for piece in pieces)))
        return _response(ids, echo, "completed", output, finished)
    channel = await service.start_stream(nursery, requests)
    return _events(channel, ids, echo, plan)


def register_responses_routes(app: QuartTrio, service: ModelService) -> None:
    """``/v1/responses/input_tokens`` (also without ``/v1``); ``app.py`` serves
    ``/v1/responses`` itself, as the fast path in front of it does."""

    @app.post("/v1/responses/input_tokens")
    @app.post("/responses/input_tokens")
    async def count_input_tokens() -> Response:
        body = parse_json_object(await request_body())
        n_tokens = await input_tokens(service, parse_chat(to_chat(body)))
        return json_response({"object": "response.input_tokens", "input_tokens": n_tokens})


# ---- the request -----------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request body a Responses request stands for.

    Raises InvalidField, naming the Responses field at fault.
    """
    if "input" not in body:
        raise InvalidField("input", "is required: a string, or a list of input items")
    if body.get("previous_response_id") is not None:
        raise InvalidField(
            "previous_response_id",
            "is not supported: this server stores no responses; send the whole "
            "conversation in 'input'",
        )
    chat = {name: value for name, value in body.items() if name not in _NOT_PASSED_ON}
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidField("instructions", f"must be a string, not {kind_of(instructions)}")
        messages.append({"role": "system", "content": instructions})
    raw = body["input"]
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            _add_item(messages, item, f"input[{index}]")
    else:
        raise InvalidField("input", f"must be a string or a list of items, not {kind_of(raw)}")
    if not messages:
        raise InvalidField("input", "holds no message: there is nothing to answer")
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = _max_output_tokens(body["max_output_tokens"])
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if isinstance(body.get("tool_choice"), dict) and "name" in body["tool_choice"]:
        chat["tool_choice"] = {
            "type": "function",
            "function": {"name": body["tool_choice"]["name"]},
        }
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    """Append the chat message(s) of one input item to ``messages``."""
    if not isinstance(item, dict):
        raise InvalidField(where, f"must be an object, not {kind_of(item)}")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role in _INPUT_ROLES:
            # A chat template knows "system"; OpenAI's "developer" is that role's new name.
            role = "system" if role == "developer" else role
            messages.append(
                {"role": role, "content": _parts(item.get("content"), f"{where}.content")}
            )
        elif role == "assistant":
            _assistant(messages)["content"] += _output_text(item.get("content"), where)
        else:
            raise InvalidField(
                f"{where}.role", "must be 'user', 'system', 'developer' or 'assistant'"
            )
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise InvalidField(f"{where}.{name}", "is required and must be a string")
        _assistant(messages).setdefault("tool_calls", []).append(
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
        )
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidField(f"{where}.call_id", "is required and must be a string")
        messages.append(
            {
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": _parts(item.get("output"), f"{where}.output"),
            }
        )
    elif kind != "reasoning":  # a model's earlier reasoning: not part of a prompt
        raise InvalidField(
            f"{where}.type",
            f"is {kind!r}; this server takes 'message', 'function_call' and "
            "'function_call_output' items",
        )


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message that output items add to: the last message if it is one (a
    response's items make one chat turn), else a new one."""
    if not messages or messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": ""})
    return messages[-1]


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Input content as chat content: a string, or chat's parts for ``input_text`` and
    ``input_image`` parts (the chat request decides whether the model takes images)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidField(
            f"{where}", f"must be a string or a list of parts, not {kind_of(content)}"
        )
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text":
            if not isinstance(part.get("text"), str):
                raise InvalidField(f"{part_where}.text", "is required and must be a string")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise InvalidField(
                    f"{part_where}.image_url", "is required: a data: URL of the image"
                )
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise InvalidField(
                f"{part_where}.type",
                f"is {kind!r}; this server takes 'input_text' and 'input_image' parts",
            )
    return parts


def _output_text(content: Any, where: str) -> str:
    """The text of an earlier assistant message: a string, or its output_text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidField(f"{where}.content", "must be a string or a list of output_text parts")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = "refusal" if kind == "refusal" else "text"
        if kind not in ("output_text", "input_text", "refusal") or not isinstance(
            part.get(key), str
        ):
            raise InvalidField(
                f"{where}.content[{index}]", "must be an output_text part with a string 'text'"
            )
        texts.append(part[key])
    return "".join(texts)


def _max_output_tokens(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidField("max_output_tokens", f"must be a positive integer, got {value!r}")
    return value


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools in chat's shape; the built-in tools of OpenAI's servers (web search,
    file search...) have no counterpart here, and are left out, as llama-server does."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidField("tools", f"must be a list, not {kind_of(tools)}")
    converted = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidField(f"tools[{index}]", f"must be an object, not {kind_of(tool)}")
        if tool.get("type") == "function":
            function = {name: value for name, value in tool.items() if name != "type"}
            converted.append({"type": "function", "function": function})
    return converted


def _response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` (structured output) as chat's ``response_format``."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise InvalidField("text", f"must be an object, not {kind_of(text)}")
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        raise InvalidField("text.format", f"must be an object, not {kind_of(form)}")
    kind = form.get("type")
    if kind == "json_schema":
        if not isinstance(form.get("schema"), dict):
            raise InvalidField("text.format.schema", "is required and must be an object")
        return {"type": "json_schema", "json_schema": {"schema": form["schema"]}}
    if kind in ("text", "json_object"):
        return {"type": kind}
    raise InvalidField("text.format.type", "must be 'text', 'json_object' or 'json_schema'")


def _echoed(body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings that a response object repeats."""
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {},
    }


# ---- the answer ------------------------------------------------------------------------------


@dataclass
class ResponseIds:
    """The id, model and creation time that one response repeats in its events."""

    model: str
    id: str = field(default_factory=lambda: f"resp_{secrets.token_hex(24)}")
    created_at: int = field(default_factory=lambda: int(time.time()))


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _item(kind: Kind, item_id: str, text: str, status: str) -> dict[str, Any]:
    """A message item (``text``), or a reasoning item; with no content while in progress.
    A message stays "completed" at the token limit too, as llama-server's (the response
    does not say "incomplete" either)."""
    in_progress = status == "in_progress"
    if kind == "text":
        return {
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [] if in_progress else [_text_part(text)],
        }
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [] if in_progress else [{"type": "reasoning_text", "text": text}],
        "encrypted_content": "",
    }


def _function_call(call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "fc_" + call.id.removeprefix("call_"),
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": "" if status == "in_progress" else call.arguments,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _output_items(output: WholeOutput) -> list[dict[str, Any]]:
    """A whole output's items: its thoughts, its message, its calls. The message is left out
    only from a reply that is tool calls alone."""
    items = []
    if output.reasoning:
        items.append(_item("reasoning", _new_id("rs"), output.reasoning, "completed"))
    if output.text or not output.calls:
        items.append(_item("text", _new_id("msg"), output.text, "completed"))
    return items + [_function_call(call) for call in output.calls]


def _usage(finished: Finished) -> dict[str, Any]:
    return {
        "input_tokens": finished.prompt_tokens,
        "input_tokens_details": {"cached_tokens": finished.cached_tokens},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _response(
    ids: ResponseIds,
    echo: dict[str, Any],
    status: str,
    output: list[dict[str, Any]],
    finished: Finished | None = None,
) -> dict[str, Any]:
    """The ``response`` object: whole once ``finished``, else as a stream's events show it."""
    return {
        "id": ids.id,
        "object": "response",
        "created_at": ids.created_at,
        "completed_at": int(time.time()) if finished is not None else None,
        "status": status,
        "model": ids.model,
        "output": output,
        "usage": _usage(finished) if finished is not None else None,
        "error": None,
        "incomplete_details": None,
        "previous_response_id": None,
        "store": False,
        **echo,
    }


# A streamed item's delta and done events, by kind.
_DELTA_EVENT: dict[Kind, str] = {
    "text": "response.output_text.delta",
    "reasoning": "response.reasoning_text.delta",
}
_DONE_EVENT: dict[Kind, str] = {
    "text": "response.output_text.done",
    "reasoning": "response.reasoning_text.done",
}


async def _events(
    channel: trio.MemoryReceiveChannel[StreamItem],
    ids: ResponseIds,
    echo: dict[str, Any],
    plan: ChatPlan,
) -> AsyncGenerator[bytes, None]:
    """The stream's events, in OpenAI's sequence: ``response.created`` and ``in_progress``;
    then each output item added, filled and done in turn (thoughts, the message with its
    text part, and the tool calls once the output has ended); then ``response.completed``
    (with llama-server's ``timings``, which the router counts). A failure ends it with
    llama-server's error event (``data: {"error": ...}``), on which OpenAI's clients raise."""
    sequence = 0
    done: list[dict[str, Any]] = []  # the items completed, in order
    kind: Kind | None = None  # the open item's, or None when none is open
    item_id = ""
    texts: list[str] = []

    def event(name: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": name, "sequence_number": sequence, **fields}
        sequence += 1
        return sse_named_event(name, payload)

    def place() -> dict[str, Any]:
        return {"item_id": item_id, "output_index": len(done), "content_index": 0}

    def open_item(new_kind: Kind) -> list[bytes]:
        nonlocal kind, item_id
        kind, item_id = new_kind, _new_id("msg" if new_kind == "text" else "rs")
        texts.clear()
        item = _item(new_kind, item_id, "", "in_progress")
        events = [event("response.output_item.added", output_index=len(done), item=item)]
        if new_kind == "text":
            events.append(event("response.content_part.added", **place(), part=_text_part("")))
        return events

    def close_item() -> list[bytes]:
        nonlocal kind
        closing, kind = kind, None
        if closing is None:
            return []
        text = "".join(texts)
        item = _item(closing, item_id, text, "completed")
        events = [event(_DONE_EVENT[closing], **place(), text=text)]
        if closing == "text":
            events.append(event("response.content_part.done", **place(), part=_text_part(text)))
        events.append(event("response.output_item.done", output_index=len(done), item=item))
        done.append(item)
        return events

    def put(parts: list[Part]) -> list[bytes]:
        events = []
        for part_kind, text in parts:
            if part_kind != kind:
                events += close_item() + open_item(part_kind)
            texts.append(text)
            extra: dict[str, Any] = {"logprobs": []} if part_kind == "text" else {}
            events.append(event(_DELTA_EVENT[part_kind], **place(), delta=text, **extra))
        return events

    def calls_made(calls: tuple[ToolCall, ...]) -> list[bytes]:
        events = []
        for call in calls:
            index = len(done)
            item = _function_call(call)
            started = _function_call(call, "in_progress")
            at = {"item_id": item["id"], "output_index": index}
            events.append(event("response.output_item.added", output_index=index, item=started))
            events.append(
                event("response.function_call_arguments.delta", **at, delta=call.arguments)
            )
            events.append(
                event("response.function_call_arguments.done", **at, arguments=call.arguments)
            )
            events.append(event("response.output_item.done", output_index=index, item=item))
            done.append(item)
        return events

    reader = OutputReader(plan)
    with channel:
        in_progress = _response(ids, echo, "in_progress", [])
        yield event("response.created", response=in_progress)
        yield event("response.in_progress", response=in_progress)
        item: StreamItem
        async for item in channel:
            if isinstance(item, RouterError):
                yield responses.sse_error(item)
                return
            _, value = item
            if isinstance(value, Piece):
                for chunk in put(reader.feed(value.text)):
                    yield chunk
                continue
            last, calls = reader.finish()
            ending = put(last)
            has_message = kind == "text" or any(entry["type"] == "message" for entry in done)
            if not calls and not has_message:  # an empty reply: its message is empty too
                ending += close_item() + open_item("text")
            ending += close_item() + calls_made(calls)
            for chunk in ending:
                yield chunk
            yield event(
                "response.completed",
                response=_response(ids, echo, "completed", done, value),
                timings=responses.timings([value]),
            )
