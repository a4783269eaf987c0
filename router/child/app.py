"""The child's HTTP surface: llama-server's routes for one model, on Quart-Trio.

Routes parse and validate, hand typed requests to the service, and shape the answer; no
inference logic lives here. Every error leaves as an OpenAI-style body (``errors.py``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

import router
from router.child import responses
from router.child.engine import Finished, GenerationRequest, SamplingParams
from router.child.parsing import (
    GenerationSettings,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from router.child.service import ModelService, StreamItem
from router.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    InvalidField,
    NotSupported,
    RouterError,
    Unavailable,
    error_body,
)
from router.jsonbody import parse_json_object

log = logging.getLogger("router.child")

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
PUBLIC_PATHS = frozenset({"/health", "/v1/health"})


def create_app(service: ModelService, *, model_id: str, api_key: str | None = None) -> QuartTrio:
    """The app serving ``service`` under the name ``model_id``."""
    app = QuartTrio("router.child")
    app.config["RESPONSE_TIMEOUT"] = None  # a long generation is not a hung one
    app.config["BODY_TIMEOUT"] = 60
    engine = service.engine
    info = engine.info
    created = int(time.time())
    state = {"is_stopping": False}
    app.extensions["llama_router_state"] = state

    @app.before_request
    async def check_api_key() -> None:
        if request.path in PUBLIC_PATHS:
            return
        if state["is_stopping"]:
            raise Unavailable("the model is stopping and takes no new requests")
        if api_key is None:
            return
        offered = request.headers.get("x-api-key", "")
        authorization = request.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            offered = authorization[7:].strip()
        if not hmac.compare_digest(offered.encode(), api_key.encode()):
            raise AuthenticationFailed("invalid or missing API key")

    @app.errorhandler(RouterError)
    async def router_error(error: RouterError) -> Response:
        return _json(error_body(error), error.status, error.headers())

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        message = f"{request.method} {request.path}: {error.description}"
        return _json({"error": {"message": message, "type": kind, "code": status}}, status)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        wrapped = RouterError(f"internal error: {type(error).__name__}: {error}")
        return _json(error_body(wrapped), 500)

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> Response:
        if state["is_stopping"]:
            raise Unavailable("the server is shutting down")
        return _json({"status": "ok"})

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> Response:
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": model_id,
                        "object": "model",
                        "created": created,
                        "owned_by": "llamacpp",
                        "meta": {
                            "vocab_type": info.vocab_type,
                            "n_vocab": info.n_vocab,
                            "n_ctx_train": info.n_ctx_train,
                            "n_embd": info.n_embd,
                            "n_params": info.n_params,
                            "size": info.size_bytes,
                        },
                    }
                ],
            }
        )

    @app.get("/props")
    async def props() -> Response:
        defaults = SamplingParams()
        return _json(
            {
                "default_generation_settings": {
                    "id": 0,
                    "id_task": -1,
                    "n_ctx": info.n_ctx,
                    "speculative": False,
                    "is_processing": service.admission.running > 0,
                    "params": {
                        "n_predict": -1,
                        "seed": 4294967295,
                        "temperature": defaults.temperature,
                        "top_k": defaults.top_k,
                        "top_p": defaults.top_p,
                        "min_p": defaults.min_p,
                        "typical_p": defaults.typical_p,
                        "repeat_last_n": defaults.repeat_last_n,
                        "repeat_penalty": defaults.repeat_penalty,
                        "presence_penalty": defaults.presence_penalty,
                        "frequency_penalty": defaults.frequency_penalty,
                        "stop": [],
                        "max_tokens": -1,
                        "ignore_eos": False,
                        "stream": False,
                        "samplers": [
                            "penalties",
                            "top_k",
                            "typ_p",
                            "top_p",
                            "min_p",
                            "temperature",
                        ],
                    },
                },
                "total_slots": info.total_slots,
                "model_path": info.model_path,
                "model_alias": model_id,
                "chat_template": info.chat_template,
                "chat_template_source": info.chat_template_source,
                "chat_template_caps": {},
                "bos_token": info.bos_token,
                "eos_token": info.eos_token,
                "modalities": {"vision": False, "audio": False},
                "build_info": f"llama-router {router.__version__}",
                "is_sleeping": False,
                "queue": {
                    "running": service.admission.running,
                    "waiting": service.admission.waiting,
                    "max_waiting": service.admission.max_waiting,
                },
            }
        )

    @app.get("/slots")
    async def slots() -> Response:
        return _json(
            [
                {
                    "id": state.id,
                    "n_ctx": info.n_ctx,
                    "is_processing": state.is_processing,
                    "next_token": {"n_decoded": state.n_decoded},
                }
                for state in engine.slot_states()
            ]
        )

    @app.post("/tokenize")
    async def tokenize() -> Response:
        body = parse_json_object(await _body())
        content = body.get("content")
        if not isinstance(content, str):
            raise InvalidField("content", "is required and must be a string")
        add_special = _flag(body, "add_special", False)
        parse_special = _flag(body, "parse_special", True)
        tokens = engine.tokenize(content, add_special=add_special, parse_special=parse_special)
        if not _flag(body, "with_pieces", False):
            return _json({"tokens": tokens})
        pieces: list[dict[str, Any]] = []
        for token in tokens:
            raw = engine.token_piece(token)
            try:
                piece: str | list[int] = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)
            pieces.append({"id": token, "piece": piece})
        return _json({"tokens": pieces})

    @app.post("/detokenize")
    async def detokenize() -> Response:
        body = parse_json_object(await _body())
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise InvalidField("tokens", "is required and must be a list of token ids")
        return _json({"content": engine.detokenize(tokens)})

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions() -> Response:
        parsed = parse_completion(parse_json_object(await _body()))
        if isinstance(parsed.prompt, str):
            tokens = engine.tokenize(parsed.prompt, add_special=True, parse_special=True)
            prompt_text = parsed.prompt
        else:
            tokens = _checked_token_ids(parsed.prompt, info.n_vocab)
            prompt_text = engine.detokenize(tokens)
        engine.check_sampling(parsed.settings.sampling)
        generation = _generation_request(tokens, parsed.settings, "prompt", info.n_ctx)
        ids = responses.ResponseIds(model=model_id, prefix="cmpl")
        echo = prompt_text if parsed.echo else ""
        if not parsed.settings.stream:
            text, finished = await service.complete(generation)
            return _json(responses.text_completion(ids, echo + text, finished))
        channel = await service.start_stream(app.nursery, generation)

        async def events() -> AsyncIterator[bytes]:
            if echo:
                yield responses.sse_event(responses.text_chunk(ids, echo))
            async for item in _drain(channel):
                if isinstance(item, str):
                    yield responses.sse_event(responses.text_chunk(ids, item))
                elif isinstance(item, Finished):
                    yield responses.sse_event(responses.text_final_chunk(ids, item))
                    if parsed.settings.include_usage:
                        yield responses.sse_event(
                            responses.usage_chunk(ids, item, "text_completion")
                        )
                else:
                    yield responses.sse_error(item)
                    return
            yield responses.SSE_DONE

        return Response(events(), headers=SSE_HEADERS)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions() -> Response:
        parsed = parse_chat(parse_json_object(await _body()))
        prompt = engine.format_chat(parsed.messages, **parsed.template_args)
        starts_with_bos = bool(info.bos_token) and prompt.startswith(info.bos_token)
        tokens = engine.tokenize(prompt, add_special=not starts_with_bos, parse_special=True)
        engine.check_sampling(parsed.settings.sampling)
        generation = _generation_request(tokens, parsed.settings, "messages", info.n_ctx)
        ids = responses.ResponseIds(model=model_id, prefix="chatcmpl")
        if not parsed.settings.stream:
            text, finished = await service.complete(generation)
            return _json(responses.chat_completion(ids, text, finished))
        channel = await service.start_stream(app.nursery, generation)

        async def events() -> AsyncIterator[bytes]:
            yield responses.sse_event(
                responses.chat_chunk(ids, {"role": "assistant", "content": ""})
            )
            async for item in _drain(channel):
                if isinstance(item, str):
                    yield responses.sse_event(responses.chat_chunk(ids, {"content": item}))
                elif isinstance(item, Finished):
                    yield responses.sse_event(responses.chat_final_chunk(ids, item))
                    if parsed.settings.include_usage:
                        yield responses.sse_event(
                            responses.usage_chunk(ids, item, "chat.completion.chunk")
                        )
                else:
                    yield responses.sse_error(item)
                    return
            yield responses.SSE_DONE

        return Response(events(), headers=SSE_HEADERS)

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def embeddings() -> Response:
        if not info.embeddings:
            raise NotSupported(
                "this model serves no embeddings: start it with --embeddings "
                "(or `embeddings = true` in its config)"
            )
        parsed = parse_embedding(parse_json_object(await _body()))
        texts = [
            item if isinstance(item, str) else engine.detokenize(item) for item in parsed.inputs
        ]
        for index, text in enumerate(texts):
            n_tokens = len(engine.tokenize(text, add_special=True, parse_special=True))
            if n_tokens > info.n_ctx:
                raise ContextLengthExceeded(f"input[{index}]", n_tokens, info.n_ctx)
        result = await service.embed(texts)
        return _json(
            responses.embedding_list(
                model_id, result.vectors, result.prompt_tokens, parsed.encoding_format
            )
        )

    return app


async def _drain(
    channel: trio.MemoryReceiveChannel[StreamItem],
) -> AsyncIterator[StreamItem]:
    """Iterate ``channel``, and close it however the iteration ends (client gone included)."""
    with channel:
        async for item in channel:
            yield item


async def _body() -> bytes:
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def _generation_request(
    tokens: list[int], settings: GenerationSettings, field: str, n_ctx: int
) -> GenerationRequest:
    if not tokens:
        raise InvalidField(field, "is empty: there is nothing to continue")
    if len(tokens) >= n_ctx:
        raise ContextLengthExceeded(field, len(tokens), n_ctx)
    return GenerationRequest(
        prompt_tokens=tokens,
        max_tokens=settings.max_tokens,
        stop=settings.stop,
        sampling=settings.sampling,
        ignore_eos=settings.ignore_eos,
    )


def _checked_token_ids(tokens: list[int], n_vocab: int) -> list[int]:
    for token in tokens:
        if not 0 <= token < n_vocab:
            raise InvalidField("prompt", f"holds token id {token}, outside the vocabulary")
    return tokens


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidField(name, "must be true or false")
    return value


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
