"""OpenAI response bodies and Server-Sent Events, built from what the engine produced."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from router.child.engine import Finished, FinishReason, Piece
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


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def timings(finished: Finished) -> dict[str, float]:
    """llama-server's ``timings``: ``prompt_n`` counts the prompt tokens evaluated, ``cache_n``
    those the prompt cache gave."""
    prompt_n = finished.prompt_tokens - finished.cached_tokens
    return {
        "cache_n": finished.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": finished.prompt_ms,
        "prompt_per_token_ms": finished.prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": 1000 * prompt_n / finished.prompt_ms if finished.prompt_ms else 0.0,
        "predicted_n": finished.completion_tokens,
        "predicted_ms": finished.predicted_ms,
        "predicted_per_token_ms": (
            finished.predicted_ms / finished.completion_tokens
            if finished.completion_tokens
            else 0.0
        ),
        "predicted_per_second": (
            1000 * finished.completion_tokens / finished.predicted_ms
            if finished.predicted_ms
            else 0.0
        ),
    }


def _finish_reason(finished: Finished) -> str:
    # A cancelled generation is never reported to the client that cancelled it; anything
    # else that ends early (graceful shutdown) reads as "length" to OpenAI clients.
    return "stop" if finished.reason is FinishReason.STOP else "length"


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


def chat_completion(ids: ResponseIds, text: str, finished: Finished) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": _finish_reason(finished),
            }
        ],
        "usage": usage(finished),
    }


def chat_chunk(
    ids: ResponseIds, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_final_chunk(ids: ResponseIds, finished: Finished) -> dict[str, Any]:
    return chat_chunk(ids, {}, _finish_reason(finished))


def usage_chunk(ids: ResponseIds, finished: Finished, object_name: str) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": object_name,
        "created": ids.created,
        "model": ids.model,
        "choices": [],
        "usage": usage(finished),
    }


# ---- /v1/completions -------------------------------------------------------------------------


def text_completion(ids: ResponseIds, text: str, finished: Finished) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "text_completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": _finish_reason(finished),
            }
        ],
        "usage": usage(finished),
    }


def text_chunk(ids: ResponseIds, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "text_completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_final_chunk(ids: ResponseIds, finished: Finished) -> dict[str, Any]:
    return text_chunk(ids, "", _finish_reason(finished))


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


@dataclass(frozen=True)
class StreamFormat:
    """How one endpoint shapes its SSE chunks."""

    ids: ResponseIds
    object_name: str
    opening: tuple[dict[str, Any], ...]
    piece: Callable[[Piece], dict[str, Any]]
    final: Callable[[Finished], dict[str, Any]]


def text_stream(ids: ResponseIds, echo: str = "") -> StreamFormat:
    return StreamFormat(
        ids=ids,
        object_name="text_completion",
        opening=(text_chunk(ids, echo),) if echo else (),
        piece=lambda piece: text_chunk(ids, piece.text),
        final=lambda finished: text_final_chunk(ids, finished),
    )


def chat_stream(ids: ResponseIds) -> StreamFormat:
    return StreamFormat(
        ids=ids,
        object_name="chat.completion.chunk",
        opening=(chat_chunk(ids, {"role": "assistant", "content": ""}),),
        piece=lambda piece: chat_chunk(ids, {"content": piece.text}),
        final=lambda finished: chat_final_chunk(ids, finished),
    )


async def sse_events(
    items: AsyncIterable[Piece | Finished | RouterError],
    shape: StreamFormat,
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE bytes for a generation: chunks, the finish, usage if asked, ``[DONE]``; or an
    error event where the generation failed."""
    for chunk in shape.opening:
        yield sse_event(chunk)
    async for item in items:
        if isinstance(item, Piece):
            yield sse_event(shape.piece(item))
        elif isinstance(item, Finished):
            # As llama-server: the last chunk says what the request cost even without
            # include_usage, so the router can count its tokens (per-key limits).
            final = shape.final(item)
            final["timings"] = timings(item)
            yield sse_event(final)
            if include_usage:
                yield sse_event(usage_chunk(shape.ids, item, shape.object_name))
        else:
            yield sse_error(item)
            return
    yield SSE_DONE
