"""A child's OpenAI answer as Ollama's: for a generation, one object per piece of text, then a
last one with ``done: true``, the reason, the token counts and the durations (in
nanoseconds); for embeddings, the vectors; for an error, its message. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.errors import InvalidRequest


def now_rfc3339() -> str:
    """The time, as Ollama writes ``created_at`` (RFC 3339, UTC, ``Z``)."""
    return rfc3339(datetime.now(UTC))


def rfc3339(moment: datetime) -> str:
    """``moment`` as Ollama writes times: RFC 3339 in UTC, to the microsecond, with ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Durations:
    """The request's times in nanoseconds, as Ollama's last object reports them."""

    total_ns: int
    load_ns: int


@dataclass
class Answer:
    """Ollama's objects for one streamed answer of a child, built as its events arrive.

    ``key`` is ``"message"`` for ``/api/chat`` (content in ``message.content``) or
    ``"response"`` for ``/api/generate``.
    """

    model: str
    key: str
    text: list[str] = field(default_factory=list)  # every piece, for a non-streamed answer
    thinking: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def take(self, payload: Any) -> Iterator[dict[str, Any]]:
        """The objects one SSE payload of the child makes (none for a bare usage event)."""
        if not isinstance(payload, dict):
            return
        if "error" in payload:
            self.error = _error_message(payload)
            return
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]
        if isinstance(payload.get("timings"), dict):
            self.timings = payload["timings"]
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            piece, thinking = _choice_text(choice, self.tool_calls)
            if piece or thinking:
                self.text.append(piece)
                self.thinking.append(thinking)
                yield self._object(piece, thinking, done=False)

    def take_whole(self, payload: Any) -> None:
        """An answer that came whole (a backend that does not stream), ``message`` and all."""
        if isinstance(payload, dict):
            for choice in payload.get("choices") or ():
                if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                    choice["delta"] = choice.pop("message")
        list(self.take(payload))

    def final(self, durations: Durations, *, whole: bool) -> dict[str, Any]:
        """The last object (``done: true``); ``whole``: with all the text, for ``stream: false``."""
        text = "".join(self.text) if whole else ""
        thinking = "".join(self.thinking) if whole else ""
        ending = self._object(text, thinking, done=True)
        if self.key == "message" and self.tool_calls:
            ending["message"]["tool_calls"] = [
                _ollama_tool_call(self.tool_calls[i]) for i in sorted(self.tool_calls)
            ]
        prompt_n = self.usage.get("prompt_tokens")
        eval_n = self.usage.get("completion_tokens")
        if prompt_n is None and self.timings:
            prompt_n = self.timings.get("prompt_n", 0) + self.timings.get("cache_n", 0)
        if eval_n is None:
            eval_n = self.timings.get("predicted_n", len(self.text))
        ending.update(
            done_reason="length" if self.finish_reason == "length" else "stop",
            total_duration=durations.total_ns,
            load_duration=durations.load_ns,
            prompt_eval_count=int(prompt_n or 0),
            prompt_eval_duration=_ms_to_ns(self.timings.get("prompt_ms")),
            eval_count=int(eval_n or 0),
            eval_duration=_ms_to_ns(self.timings.get("predicted_ms")),
        )
        return ending

    def bare_ending(self, done_reason: str) -> dict[str, Any]:
        """The one object of a request that generated nothing (``load``, ``unload``)."""
        ending = self._object("", "", done=True)
        ending["done_reason"] = done_reason
        return ending

    def _object(self, text: str, thinking: str, *, done: bool) -> dict[str, Any]:
        made: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.key == "message":
            made["message"] = {"role": "assistant", "content": text}
            if thinking:
                made["message"]["thinking"] = thinking
        else:
            made["response"] = text
            if thinking:
                made["thinking"] = thinking
        made["done"] = done
        return made


def _choice_text(choice: dict[str, Any], tool_calls: dict[int, dict[str, Any]]) -> tuple[str, str]:
    """A chunk's text and reasoning; its tool-call fragments are gathered in ``tool_calls``."""
    if "text" in choice:  # /v1/completions
        return str(choice.get("text") or ""), ""
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        return "", ""
    for fragment in delta.get("tool_calls") or ():
        if not isinstance(fragment, dict):
            continue
        call = tool_calls.setdefault(int(fragment.get("index", 0)), {"name": "", "arguments": ""})
        function = fragment.get("function") or {}
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""
    return str(delta.get("content") or ""), str(delta.get("reasoning_content") or "")


def _ollama_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as Ollama's, whose ``arguments`` are an object, not a string."""
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except ValueError:
        arguments = call["arguments"]
    return {"function": {"name": call["name"], "arguments": arguments}}


def embeddings_answer(model: str, payload: Any, durations: Durations) -> dict[str, Any]:
    """A child's ``/v1/embeddings`` answer as ``/api/embed``'s."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise InvalidRequest(f"model {model!r} gave no embeddings")
    ordered = sorted(payload["data"], key=lambda item: item.get("index", 0))
    usage = payload.get("usage") or {}
    return {
        "model": model,
        "embeddings": [item.get("embedding") for item in ordered],
        "total_duration": durations.total_ns,
        "load_duration": durations.load_ns,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
    }


def error_message(raw: bytes) -> str:
    """The message of a child's error body (OpenAI's or Ollama's shape), else its text."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or "the model answered with an error"
    return _error_message(payload)


def _error_message(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)


def _ms_to_ns(milliseconds: Any) -> int:
    return int(milliseconds * 1_000_000) if isinstance(milliseconds, int | float) else 0
