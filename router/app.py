"""The router's HTTP surface, compatible with llama-server's router mode.

Routes decide nothing: they authenticate, read which model a request names, and hand it to
the pool (model management) or the proxy (everything else). Errors leave as OpenAI bodies.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

import router
from router.errors import (
    AuthenticationFailed,
    InvalidField,
    InvalidRequest,
    PermissionDenied,
    RouterError,
    error_body,
)
from router.extra_args import checked_extra_args
from router.jsonbody import parse_json_object
from router.pool import ModelPool, ModelState
from router.proxy import ForwardRequest, start_forward
from router.settings import RouterSettings

log = logging.getLogger("router.app")

PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
FORWARDED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_app(
    pool: ModelPool, settings: RouterSettings, *, rescan: Callable[[], None]
) -> QuartTrio:
    app = QuartTrio("router")
    app.config["RESPONSE_TIMEOUT"] = None  # streams last as long as generation does
    app.config["BODY_TIMEOUT"] = 60
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    started = int(time.time())
    api_keys = [key.encode() for key in settings.api_keys]

    @app.before_request
    async def check_api_key() -> None:
        if not api_keys or request.path in PUBLIC_PATHS:
            return
        offered = request.headers.get("x-api-key", "")
        authorization = request.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            offered = authorization[7:].strip()
        # Compare with every key, always, so timing tells nothing about which one is close.
        matches = [hmac.compare_digest(offered.encode(), key) for key in api_keys]
        if not any(matches):
            raise AuthenticationFailed(
                "invalid or missing API key: send 'Authorization: Bearer KEY'"
            )

    @app.errorhandler(RouterError)
    async def router_error(error: RouterError) -> Response:
        return _json(error_body(error), error.status, error.headers())

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = "not_found_error" if status == 404 else "invalid_request_error"
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
        return _json({"status": "ok"})

    @app.get("/models")
    @app.get("/v1/models")
    async def models() -> Response:
        if request.args.get("reload") in ("1", "true"):
            rescan()
        data = [_model_entry(state, started) for state in pool.models.values()]
        return _json({"object": "list", "data": data})

    @app.post("/models/load")
    async def load() -> Response:
        body = parse_json_object(await _body())
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
        return _json({"success": True})

    @app.post("/models/unload")
    async def unload() -> Response:
        model = _model_field(parse_json_object(await _body()))
        pool.request_unload(model)
        return _json({"success": True})

    @app.get("/props")
    async def props() -> Response:
        if request.args.get("model"):
            return await forward("props")
        return _json(
            {
                "role": "router",
                "max_instances": settings.models_max,
                "models_autoload": settings.models_autoload,
                "build_info": f"llama-router {router.__version__}",
            }
        )

    @app.route("/<path:path>", methods=FORWARDED_METHODS)
    async def forward(path: str) -> Response:
        body = await _body()
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


async def _body() -> bytes:
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
