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
from router.errors import RouterError, sse_error_event

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + (b"\n\n")
    )


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
    ids: ResponseIds, choices: Sequence[Choice], *, with_logprobs: bool
) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": chat_logprobs(choice.logprobs) if with_logprobs else None,
                "finish_reason": _finish_reason(choice.finished),
            }
            for index, choice in enumerate(choices)
        ],
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
    piece: Callable[[int, Piece], dict[str, Any]]
    final: Callable[[int, Finished], dict[str, Any]]


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


def chat_stream(ids: ResponseIds, *, with_logprobs: bool = False) -> StreamFormat:
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
            yield sse_event(shape.piece(index, value))
        else:
            finished[index] = value
    indexes = sorted(finished)
    ordered = [finished[index] for index in indexes]
    for index in indexes:
        final = shape.final(index, finished[index])
        if index == indexes[-1]:
            final["timings"] = timings(ordered)
        yield sse_event(final)
    if include_usage and finished:
        yield sse_event(usage_chunk(shape.ids, ordered, shape.object_name))
    yield SSE_DONE
