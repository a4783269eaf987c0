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
from router.confd import effective_child_options
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
        data = [_model_entry(state, started, settings) for state in pool.models.values()]
        data += [
            _invalid_entry(model_id, str(problem), started)
            for model_id, problem in pool.problems.items()
            if model_id not in pool.models
        ]
        return json_response({"object": "list", "data": data})

    @app.post("/models/reload")
    async def reload() -> Response:
        rescan()
        return json_response({"success": True})

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


def _model_entry(state: ModelState, created: int, settings: RouterSettings) -> dict[str, Any]:
    spec = state.spec
    status: dict[str, Any] = {"value": state.status.value}
    if state.args is not None:
        status["args"] = state.args
    if state.is_failed:
        status["failed"] = True
        status["exit_code"] = state.exit_code
        status["error"] = state.last_error
    if state.config_error:
        status["config_error"] = state.config_error
    entry: dict[str, Any] = {
        "id": spec.id,
        "object": "model",
        "owned_by": "llama-router",
        "created": created,
        "path": str(spec.path) if spec.path else None,
        "aliases": list(spec.aliases),
        "source": spec.source,
        "in_flight": state.in_flight,
        "status": status,
        "settings": {
            "ttl": spec.ttl_s,
            "pinned": spec.is_pinned,
            "load_on_startup": spec.load_on_startup,
            "stop_timeout": spec.stop_timeout_s or settings.stop_timeout_s,
            "max_queue": spec.max_queue,
            "args": effective_child_options(spec, settings.child_defaults, settings.child_options),
        },
    }
    if spec.source_file is not None:
        entry["file"] = str(spec.source_file)
    if spec.description:
        entry["description"] = spec.description
    if spec.command is not None:
        entry["command"] = list(spec.command)
    return entry


def _invalid_entry(model_id: str, error: str, created: int) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "owned_by": "llama-router",
        "created": created,
        "source": "file",
        "status": {"value": "invalid", "error": error},
    }
