"""The child's HTTP surface: llama-server's routes for one model, on Quart-Trio.

Routes parse and validate, hand typed requests to the service, and shape the answer; no
inference logic lives here. Every error leaves as an OpenAI-style body (``errors.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from router.child import api_anthropic, api_responses, generations, metrics, responses
from router.child.api_prompt import register_prompt_routes
from router.child.engine import Engine, SamplingParams
from router.child.infill import register_infill
from router.child.parsing import (
    parse_embedding,
)
from router.child.rerank import register_rerank
from router.child.service import ModelService
from router.edge.jsonbody import parse_json_object
from router.edge.web import PUBLIC_PATHS, check_api_key, json_response, new_app, request_body
from router.errors import (
    ContextLengthExceeded,
    InvalidField,
    ModelStopping,
    NotSupported,
    Unavailable,
)
from router.version import BUILD_INFO

log = logging.getLogger("router.child")


def create_app(service: ModelService, *, model_id: str, api_key: str | None = None) -> QuartTrio:
    """The app serving ``service`` under the name ``model_id``."""
    app = new_app("router.child")
    engine = service.engine
    info = engine.info
    created = int(time.time())
    state = {"is_stopping": False}
    app.extensions["llama_router_state"] = state

    @app.before_request
    async def admit() -> None:
        if request.path in PUBLIC_PATHS:
            return
        if state["is_stopping"]:
            raise ModelStopping()
        check_api_key([api_key] if api_key else [])

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> Response:
        if state["is_stopping"]:
            raise Unavailable("the server is shutting down")
        return json_response({"status": "ok"})

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> Response:
        return json_response(
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
        defaults = SamplingParams(temperature=service.request_defaults.temperature)
        n_predict = service.request_defaults.max_tokens
        n_predict = -1 if n_predict is None else n_predict
        return json_response(
            {
                "default_generation_settings": {
                    "id": 0,
                    "id_task": -1,
                    "n_ctx": info.n_ctx,
                    "speculative": False,
                    "is_processing": service.admission.running > 0,
                    "params": {
                        "n_predict": n_predict,
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
                        "max_tokens": n_predict,
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
                "modalities": {"vision": info.vision, "audio": False},
                "build_info": BUILD_INFO,
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
        return json_response(
            [
                {
                    "id": state.id,
                    "n_ctx": state.n_ctx,
                    "speculative": False,
                    "is_processing": state.is_processing,
                    "n_prompt_tokens": state.n_prompt_tokens,
                    "n_prompt_tokens_cache": state.n_prompt_tokens_cache,
                    "n_prompt_tokens_processed": state.n_prompt_tokens_processed,
                    "n_cached_tokens": state.n_cached,
                    "next_token": {
                        "has_next_token": state.is_processing,
                        "n_decoded": state.n_decoded,
                    },
                }
                for state in engine.slot_states()
            ]
        )

    metrics_page = metrics.MetricsPage()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        queue = metrics.QueueState(
            requests_processing=service.admission.running,
            requests_deferred=service.admission.waiting,
        )
        page = metrics_page.render(engine.metrics(), queue)
        return Response(
            page,
            content_type=metrics.CONTENT_TYPE,
            headers={"Process-Start-Time-Unix": str(created)},
        )

    @app.post("/tokenize")
    async def tokenize() -> Response:
        body = parse_json_object(await request_body())
        content = body.get("content")
        if not isinstance(content, str):
            raise InvalidField("content", "is required and must be a string")
        add_special = _flag(body, "add_special", False)
        parse_special = _flag(body, "parse_special", True)
        with_pieces = _flag(body, "with_pieces", False)
        tokens = await service.tokenize_prompt(
            content, field="content", add_special=add_special, parse_special=parse_special
        )
        if not with_pieces:
            return json_response({"tokens": tokens})
        pieces = await service.off_loop(partial(_pieces, engine, tokens), size=len(tokens))
        return json_response({"tokens": pieces})

    @app.post("/detokenize")
    async def detokenize() -> Response:
        body = parse_json_object(await request_body())
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise InvalidField("tokens", "is required and must be a list of token ids")
        content = await service.off_loop(partial(engine.detokenize, tokens), size=len(tokens))
        return json_response({"content": content})

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions() -> Response:
        body = parse_json_object(await request_body())
        return _response(await generations.text_completion(service, model_id, body, app.nursery))

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions() -> Response:
        body = parse_json_object(await request_body())
        return _response(await generations.chat_completion(service, model_id, body, app.nursery))

    @app.post("/v1/responses")
    @app.post("/responses")
    async def create_response() -> Response:
        body = parse_json_object(await request_body())
        return _response(await api_responses.create_response(service, model_id, body, app.nursery))

    @app.post(api_anthropic.MESSAGES_PATH)
    async def create_message() -> Response:
        body = parse_json_object(await request_body())
        return _response(await api_anthropic.create_message(service, model_id, body, app.nursery))

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def embeddings() -> Response:
        if not info.embeddings:
            raise NotSupported(
                "this model serves no embeddings: start it with --embeddings "
                "(or `embeddings = true` in its config)"
            )
        parsed = parse_embedding(parse_json_object(await request_body()))
        for index, item in enumerate(parsed.inputs):
            if not isinstance(item, str):
                generations.checked_token_ids(item, f"input[{index}]", info.n_ctx, info)
        texts = await service.off_loop(
            partial(_texts_of, engine, parsed.inputs),
            size=sum(len(item) for item in parsed.inputs),
        )
        counts = await service.count_prompt_tokens(texts, field="input")
        for index, n_tokens in enumerate(counts):
            if n_tokens > info.n_ctx:
                raise ContextLengthExceeded(f"input[{index}]", n_tokens, info.n_ctx)
        result = await service.embed(texts)
        return json_response(
            responses.embedding_list(
                model_id, result.vectors, result.prompt_tokens, parsed.encoding_format
            )
        )

    register_prompt_routes(app, service)
    api_responses.register_responses_routes(app, service)
    api_anthropic.register_anthropic_routes(app, service)
    register_rerank(app, service, model_id)
    register_infill(app, service, model_id)
    return app


def _response(answer: generations.Answer) -> Response:
    if isinstance(answer, dict):
        return json_response(answer)
    return Response(answer, headers=generations.SSE_HEADERS)


def _texts_of(engine: Engine, inputs: Sequence[str | list[int]]) -> list[str]:
    return [item if isinstance(item, str) else engine.detokenize(item) for item in inputs]


def _pieces(engine: Engine, tokens: list[int]) -> list[dict[str, Any]]:
    """``/tokenize``'s ``with_pieces`` answer: each token with its text, or its bytes when
    they are not UTF-8 on their own."""
    pieces: list[dict[str, Any]] = []
    for token in tokens:
        raw = engine.token_piece(token)
        try:
            piece: str | list[int] = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        pieces.append({"id": token, "piece": piece})
    return pieces


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidField(name, "must be true or false")
    return value
