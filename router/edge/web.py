"""What both HTTP surfaces (the router's and the child's) share: OpenAI error bodies for every
failure, the API-key check, JSON responses, reading the body, and when to close a connection.

A connection is closed after an answer (``Connection: close``) when what is left of the request
cannot be told apart from the next one: a body that was not read to its end (answered early,
with 401 or 413), or a request with both ``Content-Length`` and ``Transfer-Encoding``, which is
refused (RFC 9112 section 6.3: a request smuggling attempt, or a broken client).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

import trio
from quart import Response, current_app, g, request
from quart_trio import QuartTrio
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from router.errors import (
    AuthenticationFailed,
    InvalidRequest,
    RouterError,
    error_body,
    shaped_for,
)

log = logging.getLogger("router.edge.web")

PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
MAX_BODY_BYTES = 64 * 1024 * 1024  # the largest request body either surface reads
BODY_TIMEOUT_S = 60  # how long a body may take to arrive


class _HandedOverBody(TrioBody):
    """Quart-Trio's request body, whose pieces are handed over as they are, not copied: a body
    that arrived whole before it was read would otherwise exist twice at once."""

    async def __anext__(self) -> bytes:
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            await self._has_data.wait()
        if self._complete.is_set() and not self._data:
            raise StopAsyncIteration
        data, self._data = self._data, bytearray()
        self._has_data.clear()
        return data  # type: ignore[return-value]  # a bytearray, which request_body keeps


class _Request(TrioRequest):
    body_class = _HandedOverBody


def new_app(name: str) -> QuartTrio:
    """A Quart-Trio app whose every error leaves as an OpenAI-style body."""
    app = QuartTrio(name)
    app.request_class = _Request
    app.config["RESPONSE_TIMEOUT"] = None  # a long generation is not a hung one
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.before_request
    async def refuse_ambiguous_framing() -> None:
        if "Content-Length" in request.headers and "Transfer-Encoding" in request.headers:
            raise InvalidRequest(
                "the request has both Content-Length and Transfer-Encoding; send only one"
            )

    @app.after_request
    async def close_when_the_rest_is_unread(response: Response) -> Response:
        if _is_rest_unread():
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(RouterError)
    async def router_error(error: RouterError) -> Response:
        return json_response(error_body(error, request.path), error.status, error.headers())

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        body = http_error_body(request.method, request.path, status, error.description or "")
        return json_response(body, status)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        wrapped = internal_error(error, request.method, request.path)
        return json_response(error_body(wrapped, request.path), 500)

    return app


def http_error_body(method: str, path: str, status: int, description: str) -> dict[str, Any]:
    """The body of an HTTP-level error (404, 405, 408, 413...), shaped for ``path``."""
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    if status >= 500:
        kind = "server_error"
    message = f"{method} {path}: {description}"
    return shaped_for(path, {"error": {"message": message, "type": kind, "code": status}})


def internal_error(error: Exception, method: str, path: str) -> RouterError:
    """A bug met while answering ``method path``: logged with its traceback, answered 500."""
    log.exception("unexpected error in %s %s", method, path, exc_info=error)
    return RouterError(f"internal error: {type(error).__name__}: {error}")


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


async def request_body() -> bytearray:
    """The request's body, read once, as it arrives, into one buffer that is not copied again.

    Quart's ``get_data`` holds the body twice (its buffer, then the bytes it returns); a 60 MB
    prompt costs 60 MB here. Raises 413 past ``MAX_CONTENT_LENGTH`` (chunked bodies included)
    and 408 when the body does not arrive within ``BODY_TIMEOUT`` seconds.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    timeout_s = current_app.config["BODY_TIMEOUT"]
    body = bytearray()
    with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as waited:
        async for piece in request.body:
            if body:
                body += piece
            else:
                body = bytearray(piece) if isinstance(piece, bytes) else piece  # kept, not copied
            if limit is not None and len(body) > limit:
                raise RequestEntityTooLarge()
    if waited.cancelled_caught:
        raise RequestTimeout()
    g.is_body_read = True
    return body


def _is_rest_unread() -> bool:
    """Whether part of the request may still be on its way: the connection cannot be reused."""
    headers = request.headers
    is_chunked = "Transfer-Encoding" in headers
    if is_chunked and "Content-Length" in headers:
        return True
    has_body = is_chunked or bool(request.content_length)
    return has_body and not g.get("is_body_read", False)
