"""The router's HTTP surface, compatible with llama-server's router mode.

Routes decide nothing: they authenticate, read which model a request names, and hand it to
the pool (model management) or the proxy (everything else). Errors leave as OpenAI bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

import router
from router.errors import (
    InvalidField,
    InvalidRequest,
    PermissionDenied,
)
from router.extra_args import checked_extra_args
from router.jsonbody import parse_json_object
from router.pool import ModelPool, ModelState
from router.proxy import ForwardRequest, start_forward
from router.settings import RouterSettings
from router.web import check_api_key, json_response, new_app, request_body

log = logging.getLogger("router.app")

FORWARDED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_app(
    pool: ModelPool, settings: RouterSettings, *, rescan: Callable[[], None]
) -> QuartTrio:
    app = new_app("router")
    started = int(time.time())

    @app.before_request
    async def authenticate() -> None:
        check_api_key(settings.api_keys)

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/models")
    @app.get("/v1/models")
    async def models() -> Response:
        if request.args.get("reload") in ("1", "true"):
            rescan()
        data = [_model_entry(state, started) for state in pool.models.values()]
        return json_response({"object": "list", "data": data})

    @app.post("/models/load")
    async def load() -> Response:
        body = parse_json_object(await request_body())
        model = _model_field(body)
        extra_args: tuple[str, ...] = ()
        if body.get("args") is not None:
            if not settings.models_allow_extra_args:
                raise PermissionDenied(
                    "this router takes no child arguments from clients; its operator can "
                    "allow a safe set with --models-allow-extra-args"
                )
            extra_args = checked_extra_args(body["args"])
        pool.request_load(model, app.nursery, extra_args=extra_args)
        return json_response({"success": True})

    @app.post("/models/unload")
    async def unload() -> Response:
        model = _model_field(parse_json_object(await request_body()))
        pool.request_unload(model)
        return json_response({"success": True})

    @app.get("/props")
    async def props() -> Response:
        if request.args.get("model"):
            return await forward("props")
        return json_response(
            {
                "role": "router",
                "max_instances": settings.models_max,
                "models_autoload": settings.models_autoload,
                "build_info": f"llama-router {router.__version__}",
            }
        )

    @app.route("/<path:path>", methods=FORWARDED_METHODS)
    async def forward(path: str) -> Response:
        body = await request_body()
        model = _requested_model(pool, body)
        autoload = settings.models_autoload
        if "autoload" in request.args:
            autoload = request.args["autoload"].lower() in ("1", "true", "yes")
        forwarded = await start_forward(
            app.nursery,
            pool,
            ForwardRequest(
                model=model,
                autoload=autoload,
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=list(request.headers.items()),
                body=body,
            ),
        )

        async def chunks() -> AsyncIterator[bytes]:
            with forwarded.body:
                async for chunk in forwarded.body:
                    yield chunk

        return Response(chunks(), status=forwarded.status, headers=Headers(forwarded.headers))

    return app


def _requested_model(pool: ModelPool, body: bytes) -> str:
    """The model a request names: ``"model"`` in a JSON body, or ``?model=``; else the only one."""
    model: Any = request.args.get("model")
    if model is None and request.method != "GET" and body.strip():
        model = parse_json_object(body).get("model")
    if model is None:
        if len(pool.models) == 1:
            return next(iter(pool.models))
        known = ", ".join(sorted(pool.models)) or "none"
        raise InvalidRequest(
            f'name a model with "model" in the body (or ?model= on GET); known models: {known}',
            param="model",
        )
    if not isinstance(model, str) or not model:
        raise InvalidField("model", "must be a non-empty string")
    return model


def _model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidField("model", "is required and must be a string")
    return model


def _model_entry(state: ModelState, created: int) -> dict[str, Any]:
    status: dict[str, Any] = {"value": state.status.value}
    if state.args is not None:
        status["args"] = state.args
    if state.is_failed:
        status["failed"] = True
        status["exit_code"] = state.exit_code
        status["error"] = state.last_error
    return {
        "id": state.spec.id,
        "object": "model",
        "owned_by": "llama-router",
        "created": created,
        "path": str(state.spec.path),
        "aliases": list(state.spec.aliases),
        "source": state.spec.source,
        "in_flight": state.in_flight,
        "status": status,
    }
