"""Ollama's requests in the terms of the OpenAI API that children speak, as pure functions.

A request of ``/api/chat``, ``/api/generate`` or ``/api/embed`` becomes the body of a child's
``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings``. Generations are always
streamed from the child, whatever the client asked: SSE is where llama-server and
``llama-router child`` put their ``timings``, which Ollama's durations are made of
(``ollama_answers.py`` turns the stream back into Ollama's objects).

What Ollama takes and a child cannot use is said, not silently dropped: ``images`` for a model
without a projector, a ``suffix``, a ``template``, ``dimensions`` are 400s with the reason.
``options.num_ctx`` is ignored: a model's context is its ``ctx_size`` setting, fixed when its
child starts, and a request cannot resize a context that other requests share.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.edge.jsonbody import kind_of
from router.errors import InvalidField

# Ollama's options that a child's sampler takes under the same name.
SAMPLING_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "stop",
)
# Go's time.Duration units, as Ollama's keep_alive strings use them ("5m", "1h30m", "300ms").
_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_KEEP_ALIVE_HELP = (
    'must be a number of seconds or a duration such as "5m" or "1h" ("0" unloads the model '
    'after the request, "-1" keeps it loaded)'
)
# Image bytes' first bytes, for the data URL an OpenAI image part needs.
_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive`` as the model's idle ttl in seconds: None when not given (the
    model's own ttl stands), ``0`` to unload once the request is done, ``inf`` never.

    A number is seconds; a string is a number of seconds or a Go duration (``"5m"``,
    ``"1h30m"``); a negative one keeps the model loaded. Raises InvalidField otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidField("keep_alive", _KEEP_ALIVE_HELP)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = _go_duration_s(text)
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise InvalidField("keep_alive", _KEEP_ALIVE_HELP)
    return math.inf if seconds < 0 else seconds


def _go_duration_s(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text.lstrip("+-")
    parts = list(_DURATION_PART.finditer(rest))
    if not rest or "".join(part.group(0) for part in parts) != rest:
        raise InvalidField("keep_alive", f"{_KEEP_ALIVE_HELP}; got {text!r}")
    return sign * sum(float(p.group(1)) * _DURATION_UNITS_S[p.group(2)] for p in parts)


# ---- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildCall:
    """What to ask the child: the path and the OpenAI body."""

    path: str
    body: dict[str, Any]


def chat_call(request: Mapping[str, Any], model: str, *, has_projector: bool) -> ChildCall:
    """``/api/chat``'s body as a streamed ``/v1/chat/completions`` request to ``model``."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise InvalidField("messages", "must be a list of {role, content} objects")
    body: dict[str, Any] = {
        "model": model,
        "messages": [_chat_message(m, i, has_projector) for i, m in enumerate(messages)],
    }
    tools = request.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise InvalidField("tools", f"must be a list, not {kind_of(tools)}")
        body["tools"] = tools
    return ChildCall("/v1/chat/completions", _with_generation_fields(body, request))


def generate_call(request: Mapping[str, Any], model: str, *, has_projector: bool) -> ChildCall:
    """``/api/generate``'s body: with ``raw``, the prompt as it is to ``/v1/completions``;
    else a user message (after ``system``, if any) to ``/v1/chat/completions``, whose chat
    template is the model's, as Ollama applies its own."""
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise InvalidField("prompt", f"must be a string, not {kind_of(prompt)}")
    for name, why in (
        ("suffix", "fill-in-the-middle is served at POST /infill"),
        ("template", "the model's chat template comes from its GGUF or its chat_template setting"),
    ):
        if request.get(name):
            raise InvalidField(name, f"is not supported here: {why}")
    images = _images(request.get("images"), "images", has_projector)
    if request.get("raw"):
        if images:
            raise InvalidField(
                "images", "cannot be sent with raw: true (a raw prompt has no image slots)"
            )
        body: dict[str, Any] = {"model": model, "prompt": prompt}
        return ChildCall("/v1/completions", _with_generation_fields(body, request))
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system:
        if not isinstance(system, str):
            raise InvalidField("system", f"must be a string, not {kind_of(system)}")
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, images)})
    body = {"model": model, "messages": messages}
    return ChildCall("/v1/chat/completions", _with_generation_fields(body, request))


def embed_call(request: Mapping[str, Any], model: str, *, field_name: str) -> ChildCall:
    """``/api/embed``'s ``input`` (a string or a list of them), or ``/api/embeddings``'
    ``prompt``, as a ``/v1/embeddings`` request."""
    given = request.get(field_name)
    is_texts = isinstance(given, list) and all(isinstance(item, str) for item in given)
    if not isinstance(given, str) and not is_texts:
        raise InvalidField(field_name, "must be a string or a list of strings")
    if request.get("dimensions") is not None:
        raise InvalidField("dimensions", "is not supported: a model's vectors keep their own size")
    body = {"model": model, "input": given, "encoding_format": "float"}
    return ChildCall("/v1/embeddings", body)


def _with_generation_fields(body: dict[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with the request's options and format, streamed with its usage."""
    options = request.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidField("options", f"must be an object, not {kind_of(options)}")
    for name in SAMPLING_OPTIONS:
        if options.get(name) is not None:
            body[name] = options[name]
    num_predict = options.get("num_predict")
    if num_predict is not None:
        if isinstance(num_predict, bool) or not isinstance(num_predict, int):
            raise InvalidField("options.num_predict", "must be an integer")
        if num_predict >= 0:  # -1 (no limit) and -2 (fill the context): the child's own bound
            body["max_tokens"] = num_predict
    response_format = _response_format(request.get("format"))
    if response_format is not None:
        body["response_format"] = response_format
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise InvalidField("format", 'must be "json" or a JSON schema object')


def _chat_message(message: Any, index: int, has_projector: bool) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidField(where, f"must be an object, not {kind_of(message)}")
    role, content = message.get("role"), message.get("content") or ""
    if not isinstance(role, str) or not role:
        raise InvalidField(f"{where}.role", "is required and must be a string")
    if not isinstance(content, str):
        raise InvalidField(f"{where}.content", f"must be a string, not {kind_of(content)}")
    images = _images(message.get("images"), f"{where}.images", has_projector)
    translated: dict[str, Any] = {"role": role, "content": _content(content, images)}
    tool_calls = message.get("tool_calls")
    if tool_calls:
        translated["tool_calls"] = [_openai_tool_call(call, i) for i, call in enumerate(tool_calls)]
    if role == "tool" and message.get("tool_name"):
        translated["name"] = message["tool_name"]
    return translated


def _openai_tool_call(call: Any, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidField("tool_calls", "each must be {function: {name, arguments}}")
    arguments = function.get("arguments") or {}
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {
            "name": function["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _images(value: Any, where: str, has_projector: bool) -> list[str]:
    """Data URLs for Ollama's base64 ``images``; a 400 that names the missing projector when
    the model has none."""
    if not value:
        return []
    if not has_projector:
        raise InvalidField(
            where,
            "holds images, but this model has no projector (no mmproj*.gguf beside its "
            "weights), so it cannot read them; use a vision model",
        )
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidField(where, "must be a list of base64-encoded images")
    urls = []
    for item in value:
        try:
            head = base64.b64decode(item[:16], validate=False)
        except (binascii.Error, ValueError):
            raise InvalidField(where, "must be a list of base64-encoded images") from None
        mime = next((m for magic, m in _IMAGE_MAGIC if head.startswith(magic)), "image/png")
        urls.append(f"data:{mime};base64,{item}")
    return urls


def _content(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return parts
