"""OpenAI response bodies and Server-Sent Events, built from what the engine produced."""

from __future__ import annotations

import base64
import codecs
import json
import math
import secrets
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.child.engine import Finished, FinishReason, Piece, TokenLogprob
from router.child.tools import ChatOutput, ChatPlan, assistant_message
from router.errors import RouterError, sse_error_event

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + (b"\n\n")
    )


def sse_named_event(name: str, payload: dict[str, Any]) -> bytes:
    """An event with an ``event:`` line, as the Responses and Anthropic streams send them."""
    return b"event: " + name.encode() + b"\n" + sse_event(payload)


def sse_error(error: RouterError) -> bytes:
    return sse_error_event(error)


def usage(choices: Sequence[Finished]) -> dict[str, int]:
    """OpenAI's ``usage``: the prompt counted once, the completions of every choice summed."""
    prompt_tokens = choices[0].prompt_tokens
    completion_tokens = sum(finished.completion_tokens for finished in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def timings(choices: Sequence[Finished]) -> dict[str, float]:
    """llama-server's ``timings``, for the whole request: ``prompt_n`` counts the prompt
    tokens evaluated, ``cache_n`` those the prompt cache gave (the prompt once, as in
    ``usage``: that of the choice that found the least in its cache); ``predicted_n`` sums
    the choices' tokens, generated together in ``predicted_ms``. So ``cache_n + prompt_n``
    and ``predicted_n`` are what ``usage`` says, which is how the router counts a stream."""
    prompt = min(choices, key=lambda finished: finished.cached_tokens)
    prompt_n = prompt.prompt_tokens - prompt.cached_tokens
    prompt_ms = max(finished.prompt_ms for finished in choices)
    predicted_n = sum(finished.completion_tokens for finished in choices)
    predicted_ms = max(finished.predicted_ms for finished in choices)
    return {
        "cache_n": prompt.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": 1000 * prompt_n / prompt_ms if prompt_ms else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": 1000 * predicted_n / predicted_ms if predicted_ms else 0.0,
    }


def _finish_reason(finished: Finished) -> str:
    # A cancelled generation is never reported to the client that cancelled it; anything
    # else that ends early (graceful shutdown) reads as "length" to OpenAI clients.
    return "stop" if finished.reason is FinishReason.STOP else "length"


@dataclass(frozen=True)
class Choice:
    """One generation's output, whole: its text, why it ended, and its tokens' logprobs."""

    text: str
    finished: Finished
    logprobs: tuple[TokenLogprob, ...] = ()

    @classmethod
    def of(cls, pieces: Sequence[Piece], finished: Finished) -> Choice:
        return cls(
            text="".join(piece.text for piece in pieces),
            finished=finished,
            logprobs=tuple(entry for piece in pieces for entry in piece.logprobs),
        )


# ---- log-probabilities -----------------------------------------------------------------------

# What a log-probability of minus infinity (a token the logits rule out) reads as in JSON,
# which has no infinity: OpenAI's "very unlikely".
_UNLIKELY = -9999.0


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else _UNLIKELY


def _token_text(piece: bytes) -> str:
    """A token's text; a token holding part of a character reads as U+FFFD (its ``bytes``
    say what it is)."""
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI chat's ``logprobs``: ``{"content": [...]}``, one entry per token."""
    return {
        "content": [
            {
                **_chat_token(entry.piece, entry.logprob),
                "top_logprobs": [_chat_token(piece, logprob) for _, piece, logprob in entry.top],
            }
            for entry in entries
        ]
    }


def _chat_token(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": _token_text(piece), "logprob": _logprob(logprob), "bytes": list(piece)}


class TextOffsets:
    """Where each token's text starts in a completion's text (OpenAI's ``text_offset``), in
    characters, the text decoded as the engine decodes it (U+FFFD for bytes that make no
    character). A character belongs to the token its first byte is in: a token that only
    ends a character starts after it."""

    def __init__(self, start: int = 0) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoded = start  # characters the bytes so far have given

    def advance(self, piece: bytes) -> int:
        """The offset of the token of ``piece``; the next token starts after it."""
        pending, _ = self._decoder.getstate()  # bytes of a character not yet complete
        offset = self._decoded + len(pending.decode("utf-8", errors="replace"))
        self._decoded += len(self._decoder.decode(piece))
        return offset


def completion_logprobs(entries: Sequence[TokenLogprob], offsets: TextOffsets) -> dict[str, Any]:
    """OpenAI's legacy completions ``logprobs``. Each ``top_logprobs`` map holds the likeliest
    tokens and the chosen one (so up to ``logprobs + 1`` of them, as OpenAI's), by text: two
    tokens of the same text keep the likelier's."""
    top_logprobs = []
    for entry in entries:
        top: dict[str, float] = {}
        for _, piece, logprob in (*entry.top, (entry.token, entry.piece, entry.logprob)):
            top.setdefault(_token_text(piece), _logprob(logprob))
        top_logprobs.append(top)
    return {
        "tokens": [_token_text(entry.piece) for entry in entries],
        "token_logprobs": [_logprob(entry.logprob) for entry in entries],
        "top_logprobs": top_logprobs,
        "text_offset": [offsets.advance(entry.piece) for entry in entries],
    }


@dataclass
class ResponseIds:
    """The id, timestamp and model name that every chunk of one response repeats."""

    model: str
    prefix: str
    id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"


# ---- /v1/chat/completions --------------------------------------------------------------------


def chat_completion(
    ids: ResponseIds,
    choices: Sequence[Choice],
    *,
    with_logprobs: bool,
    plan: ChatPlan | None = None,
) -> dict[str, Any]:
    """The answer; with ``plan``, each message read for tool calls and thoughts."""
    shaped = []
    for index, choice in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        has_calls = False
        if plan is not None and plan.reads_output:
            message, has_calls = assistant_message(plan, choice.text)
        shaped.append(
            {
                "index": index,
                "message": message,
                "logprobs": chat_logprobs(choice.logprobs) if with_logprobs else None,
                "finish_reason": "tool_calls" if has_calls else _finish_reason(choice.finished),
            }
        )
    return {
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "choices": shaped,
        "usage": usage([choice.finished for choice in choices]),
    }


def chat_chunk(
    ids: ResponseIds,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(ids: ResponseIds, choices: Sequence[Finished], object_name: str) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": object_name,
        "created": ids.created,
        "model": ids.model,
        "choices": [],
        "usage": usage(choices),
    }


# ---- /v1/completions -------------------------------------------------------------------------


def text_completion(
    ids: ResponseIds, choices: Sequence[Choice], *, echo: str, with_logprobs: bool
) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "text_completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [
            {
                "index": index,
                "text": echo + choice.text,
                "logprobs": (
                    completion_logprobs(choice.logprobs, TextOffsets(len(echo)))
                    if with_logprobs
                    else None
                ),
                "finish_reason": _finish_reason(choice.finished),
            }
            for index, choice in enumerate(choices)
        ],
        "usage": usage([choice.finished for choice in choices]),
    }


def text_chunk(
    ids: ResponseIds,
    index: int,
    text: str,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "text_completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


# ---- /v1/embeddings --------------------------------------------------------------------------


def embedding_list(
    model: str, vectors: list[list[float]], prompt_tokens: int, encoding_format: str
) -> dict[str, Any]:
    def encode(vector: list[float]) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": index, "embedding": encode(vector)}
            for index, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# ---- streams ---------------------------------------------------------------------------------

# What a stream carries: a piece of one choice's text (or its end), by the choice's index;
# or the error that ends the whole stream.
StreamItem = tuple[int, Piece | Finished] | RouterError


@dataclass(frozen=True)
class StreamFormat:
    """How one endpoint shapes its SSE chunks, each for one choice (by index)."""

    ids: ResponseIds
    object_name: str
    opening: Callable[[int], dict[str, Any] | None]
    # A chunk, or several (a tool call's name, then its arguments); none while text is held.
    piece: Callable[[int, Piece], dict[str, Any] | list[dict[str, Any]]]
    final: Callable[[int, Finished], dict[str, Any] | list[dict[str, Any]]]


def _chunks(shaped: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return shaped if isinstance(shaped, list) else [shaped]


def text_stream(ids: ResponseIds, echo: str = "", *, with_logprobs: bool = False) -> StreamFormat:
    offsets: dict[int, TextOffsets] = {}

    def piece(index: int, piece: Piece) -> dict[str, Any]:
        logprobs = None
        if with_logprobs:
            if index not in offsets:
                offsets[index] = TextOffsets(len(echo))
            logprobs = completion_logprobs(piece.logprobs, offsets[index])
        return text_chunk(ids, index, piece.text, logprobs=logprobs)

    return StreamFormat(
        ids=ids,
        object_name="text_completion",
        opening=lambda index: text_chunk(ids, index, echo) if echo else None,
        piece=piece,
        final=lambda index, finished: text_chunk(ids, index, "", _finish_reason(finished)),
    )


def chat_stream(
    ids: ResponseIds, *, with_logprobs: bool = False, plan: ChatPlan | None = None
) -> StreamFormat:
    """Chat chunks; with ``plan``, each choice's text read for tool calls and thoughts."""
    if plan is not None and plan.reads_output:
        return _planned_chat_stream(ids, with_logprobs, plan)
    return StreamFormat(
        ids=ids,
        object_name="chat.completion.chunk",
        opening=lambda index: chat_chunk(ids, index, {"role": "assistant", "content": ""}),
        piece=lambda index, piece: chat_chunk(
            ids,
            index,
            {"content": piece.text},
            logprobs=chat_logprobs(piece.logprobs) if with_logprobs else None,
        ),
        final=lambda index, finished: chat_chunk(ids, index, {}, _finish_reason(finished)),
    )


def _planned_chat_stream(ids: ResponseIds, with_logprobs: bool, plan: ChatPlan) -> StreamFormat:
    """Chat chunks of text read as it comes (``tools.ChatOutput``): ``reasoning_content``
    and ``content`` deltas, tool calls at the end, ``finish_reason`` "tool_calls" if any.
    Log-probabilities of held text go out with the next chunk that is sent."""
    outputs: dict[int, ChatOutput] = {}
    pending: dict[int, list[TokenLogprob]] = {}

    def chunks(
        index: int, deltas: list[dict[str, Any]], entries: Sequence[TokenLogprob]
    ) -> list[dict[str, Any]]:
        waiting = pending.setdefault(index, [])
        waiting.extend(entries)
        shaped = []
        for delta in deltas:
            logprobs = None
            if with_logprobs and waiting:
                logprobs = chat_logprobs(waiting)
                waiting.clear()
            shaped.append(chat_chunk(ids, index, delta, logprobs=logprobs))
        return shaped

    def output_of(index: int) -> ChatOutput:
        if index not in outputs:
            outputs[index] = plan.output()
        return outputs[index]

    def piece(index: int, piece: Piece) -> list[dict[str, Any]]:
        return chunks(index, output_of(index).feed(piece.text), piece.logprobs)

    def final(index: int, finished: Finished) -> list[dict[str, Any]]:
        deltas, has_calls = output_of(index).finish()
        reason = "tool_calls" if has_calls else _finish_reason(finished)
        shaped = chunks(index, deltas, ())
        waiting = pending.pop(index, [])
        last_logprobs = chat_logprobs(waiting) if with_logprobs and waiting else None
        return [*shaped, chat_chunk(ids, index, {}, reason, logprobs=last_logprobs)]

    return StreamFormat(
        ids=ids,
        object_name="chat.completion.chunk",
        opening=lambda index: chat_chunk(ids, index, {"role": "assistant", "content": ""}),
        piece=piece,
        final=final,
    )


async def sse_events(
    items: AsyncIterable[StreamItem],
    shape: StreamFormat,
    *,
    n_choices: int = 1,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """The SSE bytes for a request's ``n_choices`` generations: the choices' chunks as they
    come; once all have ended, a finish chunk for each (by index), usage if asked, and
    ``[DONE]``. Or an error event where a generation failed: nothing follows it.

    As llama-server's, the last finish chunk carries ``timings`` even without include_usage,
    so the router can count the request's tokens (per-key limits): with several choices,
    those of the whole request (see :func:`timings`), on the last finish chunk only.
    """
    for index in range(n_choices):
        opening = shape.opening(index)
        if opening is not None:
            yield sse_event(opening)
    finished: dict[int, Finished] = {}
    async for item in items:
        if isinstance(item, RouterError):
            yield sse_error(item)
            return
        index, value = item
        if isinstance(value, Piece):
            for chunk in _chunks(shape.piece(index, value)):
                yield sse_event(chunk)
        else:
            finished[index] = value
    indexes = sorted(finished)
    ordered = [finished[index] for index in indexes]
    for index in indexes:
        finals = _chunks(shape.final(index, finished[index]))
        if index == indexes[-1]:
            finals[-1]["timings"] = timings(ordered)
        for final in finals:
            yield sse_event(final)
    if include_usage and finished:
        yield sse_event(usage_chunk(shape.ids, ordered, shape.object_name))
    yield SSE_DONE
