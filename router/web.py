"""What both HTTP surfaces (the router's and the child's) share: OpenAI error bodies for every
failure, the API-key check, JSON responses and reading the body."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from router.errors import AuthenticationFailed, RouterError, error_body

log = logging.getLogger("router.web")

PUBLIC_PATHS = frozenset({"/health", "/v1/health"})


def new_app(name: str) -> QuartTrio:
    """A Quart-Trio app whose every error leaves as an OpenAI-style body."""
    app = QuartTrio(name)
    app.config["RESPONSE_TIMEOUT"] = None  # a long generation is not a hung one
    app.config["BODY_TIMEOUT"] = 60
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

    @app.errorhandler(RouterError)
    async def router_error(error: RouterError) -> Response:
        return json_response(error_body(error), error.status, error.headers())

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        message = f"{request.method} {request.path}: {error.description}"
        return json_response({"error": {"message": message, "type": kind, "code": status}}, status)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        wrapped = RouterError(f"internal error: {type(error).__name__}: {error}")
        return json_response(error_body(wrapped), 500)

    return app


def check_api_key(keys: Sequence[str]) -> None:
    """Raise AuthenticationFailed unless the request carries one of ``keys`` (if any).

    Accepts ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; compares with every key, in
    constant time, so the timing tells nothing about how close a guess was.
    """
    if not keys or request.path in PUBLIC_PATHS:
        return
    offered = request.headers.get("x-api-key", "")
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        offered = authorization[7:].strip()
    matches = [hmac.compare_digest(offered.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise AuthenticationFailed("invalid or missing API key: send 'Authorization: Bearer KEY'")


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def request_body() -> bytes:
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()
