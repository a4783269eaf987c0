"""How many tokens an answer used, read from its bytes as they pass through the router.

A ``UsageCounter`` is fed each chunk of a child's answer and keeps a bounded part of it (never
a copy of the whole answer); at the end it says the answer's ``Usage``, or None when the answer
carried nothing to count (an error body, an answer that is not JSON or SSE):

- a JSON answer (chat, completions, embeddings): its top-level ``usage`` object, read with a
  real JSON parser, so nested fields (llama-server's ``prompt_tokens_details``) are no problem;
  llama-server's own ``/completion`` answers give ``tokens_evaluated`` and ``tokens_predicted``
  instead. An answer longer than ``HEAD_BYTES + TAIL_BYTES`` is read from its first and last
  bytes, where backends put ``usage``.
- an SSE stream: the last ``usage`` object among its events (``stream_options.include_usage``).
  Without one, llama-server's ``timings`` (``cache_n`` + ``prompt_n``, ``predicted_n``) when
  present; else each choice that carries content in an event counts as one completion token,
  which is how ``llama-router child`` and llama-server stream (a piece per token). That last
  count is an estimate: a piece held back (an unfinished UTF-8 character, a possible stop
  string) makes it low, and the prompt is not counted.
"""

from __future__ import annotations

import json
import re
from typing import Any

from router.edge.sse import EventStream, is_event_stream, json_payloads
from router.hooks.plugin_types import Usage

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 64 * 1024
BATCH_CHUNKS = 32  # chunks fed before they are read: a few hundred ms of a small model's stream
BATCH_BYTES = 64 * 1024  # ... or this many bytes of them, whichever comes first

_USAGE_KEY = re.compile(r'"usage"\s*:\s*(?=\{)')
_CONTENT_FIELDS = ("content", "reasoning_content", "tool_calls", "function_call", "refusal")


class UsageCounter:
    """Counts the tokens of one answer; call ``begin``, then ``feed`` each chunk, then ``usage``.

    Chunks are read a batch at a time (``BATCH_CHUNKS`` or ``BATCH_BYTES``, whichever comes
    first), not as each arrives: a stream's chunk comes every step of the model, and the parser
    and the JSON decoder, run once a step, run on the caches the step has just emptied (about
    60 µs a chunk on Gemma, against a few for a batch's every chunk but the first).
    """

    def __init__(self) -> None:
        self._reader: _JsonBody | _EventStream | None = None
        self._unread: list[bytes] = []
        self._unread_bytes = 0

    def begin(self, content_type: str) -> None:
        """The answer's headers are in: read its body as SSE or as a JSON document."""
        self._unread.clear()
        self._unread_bytes = 0
        if is_event_stream(content_type):
            self._reader = _EventStream()
        else:
            self._reader = _JsonBody()

    def feed(self, chunk: bytes) -> None:
        if self._reader is not None:
            self._unread.append(chunk)
            self._unread_bytes += len(chunk)
            if len(self._unread) >= BATCH_CHUNKS or self._unread_bytes >= BATCH_BYTES:
                self._read()

    def usage(self) -> Usage | None:
        """The tokens of the bytes fed so far (all of them, once the answer has ended)."""
        if self._reader is None:
            return None
        self._read()
        return self._reader.usage()

    def _read(self) -> None:
        assert self._reader is not None
        for chunk in self._unread:
            self._reader.feed(chunk)
        self._unread.clear()
        self._unread_bytes = 0


class _JsonBody:
    """The whole body while it is short; its first and last bytes once it is not."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self._is_cut = False  # bytes between head and tail were dropped

    def feed(self, chunk: bytes) -> None:
        room = HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]
            self._is_cut = True

    def usage(self) -> Usage | None:
        if not self._is_cut:
            payload = _json_or_none(bytes(self._head + self._tail))
            return _usage_in(payload) if isinstance(payload, dict) else None
        for text, is_tail in ((_text(self._tail), True), (_text(self._head), False)):
            starts = [match.end() for match in _USAGE_KEY.finditer(text)]
            for start in reversed(starts) if is_tail else starts:
                found = _decoded_at(text, start)
                usage = _usage_object(found)
                if usage is not None:
                    return usage
        return None


class _EventStream:
    """Server-sent events (``sse.py``), read one event at a time as they complete."""

    def __init__(self) -> None:
        self._events = EventStream()
        self._is_ended = False
        self._saw_choices = False
        self._usage: Usage | None = None
        self._timings: Usage | None = None
        self._pieces = 0

    def feed(self, chunk: bytes) -> None:
        self._take(self._events.feed(chunk))

    def usage(self) -> Usage | None:
        if not self._is_ended:  # a stream cut short: what it sent still counts
            self._is_ended = True
            self._take(self._events.end())
        if self._usage is not None:
            return self._usage
        if self._timings is not None:
            return self._timings
        if self._saw_choices:
            return Usage(prompt_tokens=0, completion_tokens=self._pieces, total_tokens=self._pieces)
        return None

    def _take(self, events: list[bytes]) -> None:
        for payload in json_payloads(events):
            if isinstance(payload, dict):
                self._take_event(payload)

    def _take_event(self, payload: dict[str, Any]) -> None:
        if "usage" in payload:  # one event in a stream, at its end
            usage = _usage_object(payload["usage"])
            if usage is not None:
                self._usage = usage
        if "timings" in payload:
            timings = _timings(payload)
            if timings is not None:
                self._timings = timings
        choices = payload.get("choices")
        if isinstance(choices, list):
            self._saw_choices = True
            self._pieces += sum(1 for choice in choices if _carries_content(choice))
        elif isinstance(payload.get("content"), str):  # llama-server's own /completion
            self._saw_choices = True
            if payload["content"]:
                self._pieces += 1


def _usage_in(payload: dict[str, Any]) -> Usage | None:
    """The usage a whole JSON answer states: OpenAI's ``usage``, or llama-server's fields."""
    usage = _usage_object(payload.get("usage"))
    if usage is not None:
        return usage
    prompt = _count(payload.get("tokens_evaluated"))
    completion = _count(payload.get("tokens_predicted"))
    if prompt is not None or completion is not None:
        return _usage(prompt, completion, None)
    return _timings(payload)


def _usage_object(found: object) -> Usage | None:
    if not isinstance(found, dict):
        return None
    # OpenAI chat's names, else those of the Responses and Anthropic APIs; Anthropic's
    # input_tokens leave out the prompt tokens read from its cache.
    prompt = _count(found.get("prompt_tokens", found.get("input_tokens")))
    if prompt is not None and "prompt_tokens" not in found:
        prompt += _count(found.get("cache_read_input_tokens")) or 0
    completion = _count(found.get("completion_tokens", found.get("output_tokens")))
    total = _count(found.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    return _usage(prompt, completion, total)


def _timings(payload: dict[str, Any]) -> Usage | None:
    timings = payload.get("timings")
    if not isinstance(timings, dict):
        return None
    prompt = _count(timings.get("prompt_n"))
    completion = _count(timings.get("predicted_n"))
    if prompt is None and completion is None:
        return None
    # prompt_n counts the prompt tokens evaluated; cache_n those found in the prompt cache.
    prompt = (prompt or 0) + (_count(timings.get("cache_n")) or 0)
    return _usage(prompt, completion, None)


def _usage(prompt: int | None, completion: int | None, total: int | None) -> Usage:
    """A Usage whose total is never less than its parts (a backend may leave one out)."""
    prompt, completion = prompt or 0, completion or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=max(total or 0, prompt + completion),
    )


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _carries_content(choice: object) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return any(delta.get(name) for name in _CONTENT_FIELDS)
    return bool(choice.get("text"))


def _json_or_none(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _decoded_at(text: str, start: int) -> object:
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]
    except (ValueError, RecursionError):
        return None


def _text(data: bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
