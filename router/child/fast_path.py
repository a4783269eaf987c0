"""A raw ASGI path in front of the child's Quart app, for the requests that carry the load.

Quart costs about 0.3 ms of CPU per request on a small machine (its request and response
objects, two tasks a request), which is most of what a one-token completion costs us and
more than llama-server's whole answer. Health checks and completions (chat, Responses and
Anthropic messages included) whose small body came with a ``Content-Length`` are answered
here, by the same functions the Quart routes call (``generations.py``, ``api_responses.py``,
``api_anthropic.py``), errors in the shape of the route; everything else, and every request
while the model stops or when the child has an API key to check, goes to Quart untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, cast

import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestTimeout

from router.child import api_anthropic, api_responses, generations
from router.child.service import ModelService
from router.edge.asgi_lifespan import ASGIApp, Message
from router.edge.client_watch import ClientWatch
from router.edge.jsonbody import parse_json_object
from router.edge.raw_asgi import Receive, Send, content_length, read_body
from router.edge.web import (
    BODY_TIMEOUT_S,
    PUBLIC_PATHS,
    http_error_body,
    internal_error,
)
from router.errors import RouterError, error_body

# Larger bodies go through Quart, which reads them in pieces under the same limits.
FAST_BODY_BYTES = 1024 * 1024

Handler = Callable[[ModelService, str, dict[str, Any], trio.Nursery], Awaitable[generations.Answer]]

_HANDLERS: dict[str, Handler] = {
    "/v1/completions": generations.text_completion,
    "/completions": generations.text_completion,
    "/v1/chat/completions": generations.chat_completion,
    "/chat/completions": generations.chat_completion,
    "/v1/responses": api_responses.create_response,
    "/responses": api_responses.create_response,
    api_anthropic.MESSAGES_PATH: api_anthropic.create_message,
}
_HEALTHY = json.dumps({"status": "ok"}).encode()
_SSE_HEADERS = [
    (name.lower().encode(), value.encode()) for name, value in generations.SSE_HEADERS.items()
]


def with_fast_path(
    app: QuartTrio, service: ModelService, *, model_id: str, api_key: str | None
) -> ASGIApp:
    """``app``, with health checks and small completions answered before it."""
    quart = cast(ASGIApp, app)
    state = app.extensions["llama_router_state"]
    watch = ClientWatch()  # a request that lasts stops when its client leaves, as on Quart's

    async def serve(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or api_key is not None or state["is_stopping"]:
            await quart(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path in PUBLIC_PATHS:
            await _send_json(send, 200, _HEALTHY)
            return
        handler = _HANDLERS.get(path) if method == "POST" else None
        length = content_length(scope["headers"])
        if handler is None or length is None or length > FAST_BODY_BYTES:
            await quart(scope, receive, send)
            return
        try:
            body = await read_body(receive, BODY_TIMEOUT_S)
        except RequestTimeout as timeout:
            payload = http_error_body(method, path, 408, timeout.description or "")
            await _send_json(send, 408, json.dumps(payload).encode(), close=True)
            return
        if body is None:
            return  # the client left
        async with watch.cancelled_when_the_client_leaves(receive, app.nursery):
            await _answer(handler, body, path, send)

    async def _answer(handler: Handler, body: bytearray, path: str, send: Send) -> None:
        try:
            answer = await handler(service, model_id, parse_json_object(body), app.nursery)
        except RouterError as error:
            headers = error.headers()
            await _send_json(send, error.status, _dumps(error_body(error, path)), headers=headers)
            return
        except Exception as error:  # a bug: answered as Quart would
            wrapped = internal_error(error, "POST", path)
            await _send_json(send, 500, _dumps(error_body(wrapped, path)))
            return
        if isinstance(answer, dict):
            await _send_json(send, 200, _dumps(answer))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        async with aclosing(answer) as events:  # a client that leaves stops the generation
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return serve


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


async def _send_json(
    send: Send,
    status: int,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
