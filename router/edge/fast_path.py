"""A raw ASGI path in front of the router's Quart-Trio app, for the requests that carry the load.

Quart costs the router most of its time per forwarded request (its request and response
objects, a task to run the handler, another to forward, a channel between them: see
bench/router_profile.md). The OpenAI routes' POSTs whose small body came with a
``Content-Length`` are served here instead, through the same checks in the same order
(``gate.py``: Host, the caller's key, the model named, the caller's right to it, the plugins'
rewriting of the body; the body's size and time limits of ``web.py``), then forwarded in this
task (``proxy.relay``). Everything else goes to Quart untouched: other routes, other methods,
chunked or large bodies, and every request when a plugin added a route or a request hook of
its own to the app (it would not run here).

What a client sees is what Quart would answer, to the byte, but for the framing (an answer
with a length keeps it instead of being chunked) and the order of the headers.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, cast

import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound, RequestTimeout

from router.edge.asgi_lifespan import ASGIApp, Message
from router.edge.client_watch import ClientWatch
from router.edge.gate import Gate, is_autoload
from router.edge.lean_http import THREAD_WRITER
from router.edge.proxy import ForwardRequest, relay
from router.edge.raw_asgi import Receive, Send, content_length, read_body
from router.edge.web import BODY_TIMEOUT_S, http_error_body, internal_error
from router.errors import RouterError, error_body
from router.hooks.plugin_types import RequestInfo

# The routes served here when Quart would only forward them; larger bodies go through Quart,
# which reads them in pieces under the same limits.
FAST_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
        "/v1/embeddings",
        "/embeddings",
        "/v1/responses",
        "/responses",
        "/v1/messages",
        "/infill",
        "/tokenize",
        "/detokenize",
        "/v1/rerank",
        "/rerank",
        "/v1/reranking",
        "/reranking",
    }
)
FAST_BODY_BYTES = 1024 * 1024
# The request hooks create_app and new_app register; any other (a plugin's) disables the path.
_OWN_HOOKS = frozenset(
    {
        "refuse_ambiguous_framing",
        "authenticate",
        "no_cross_origin_reads",
        "close_when_the_rest_is_unread",
    }
)


def with_fast_path(
    app: QuartTrio,
    *,
    autoload: bool,
    timeout_s: float,
    body_timeout_s: float = BODY_TIMEOUT_S,
    load_progress: bool = False,
) -> ASGIApp:
    """``app``, with the forwarded OpenAI routes served before it (when nothing of a plugin's
    would be skipped). ``autoload``, ``timeout_s`` and ``load_progress`` (comments to a
    stream while its model loads) are the router's settings."""
    quart = cast(ASGIApp, app)
    gate: Gate = app.extensions["llama_router_gate"]
    paths = _forwarded_paths(app)
    watch = ClientWatch()

    async def serve(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in paths:
            await quart(scope, receive, send)
            return
        length = content_length(scope["headers"])
        if length is None or length > FAST_BODY_BYTES:
            await quart(scope, receive, send)
            return
        is_started = False

        async def send_noting_the_start(message: Message) -> None:
            nonlocal is_started
            is_started = True
            await send(message)

        try:
            await _forward(
                gate, scope, receive, send_noting_the_start, autoload, timeout_s, body_timeout_s,
                load_progress=load_progress,
                watch=watch, owner=app.nursery,
            )  # fmt: skip
        except Exception as error:
            if is_started:
                raise  # the server ends the answer (CutConnection, a client gone, a bug)
            await _answer_failure(send, scope["path"], error)

    return serve


async def _answer_failure(send: Send, path: str, error: Exception) -> None:
    """Answer ``error`` (raised before the answer's head) as Quart's error handlers would."""
    if isinstance(error, RouterError):
        await _send_json(send, error.status, error_body(error, path), error.headers())
    elif isinstance(error, RequestTimeout):
        status = error.code or 408
        await _send_json(send, status, http_error_body("POST", path, status, error.description))
    else:  # a bug
        await _send_json(send, 500, error_body(internal_error(error, "POST", path), path))


async def _forward(
    gate: Gate,
    scope: Message,
    receive: Receive,
    send: Send,
    autoload: bool,
    timeout_s: float,
    body_timeout_s: float,
    *,
    load_progress: bool = False,
    watch: ClientWatch,
    owner: trio.Nursery,
) -> None:
    """What Quart's ``authenticate`` and ``forward`` do, in that order, with the same code.

    ``watch`` cancels the forward if its client leaves (Quart stops a request whose client has
    gone: so does this path); ``owner``, the app's nursery, runs its alarm.
    Raises RouterError or RequestTimeout before the answer's head.
    """
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    ]
    query = _first_values(scope["query_string"])
    client = scope.get("client")
    info = RequestInfo(
        method="POST",
        path=scope["path"],
        headers={name.lower(): value for name, value in headers},
        query=query,
        client=client[0] if client else "",
    )
    host = next((value for name, value in headers if name.lower() == "host"), None)
    principal = await gate.authenticate(host, info)
    received = await read_body(receive, body_timeout_s)
    if received is None:
        return  # the client left: nobody to answer
    requested = await gate.requested_model(query.get("model"), "POST", received)
    state = await gate.resolve(requested, principal, info)
    body = await gate.transformed(state.spec.id, received, principal)
    request = ForwardRequest(
        state=state,
        principal=principal,
        autoload=is_autoload(autoload, query.get("autoload")),
        method="POST",
        path=scope["raw_path"].decode("latin-1"),
        query=scope["query_string"],
        headers=headers,
        body=body,
        timeout_s=timeout_s,
        load_progress=load_progress,
    )
    async with watch.cancelled_when_the_client_leaves(receive, owner):
        await relay(
            gate.pool, gate.plugins, request, send,
            thread_writer=scope.get("extensions", {}).get(THREAD_WRITER),
        )  # fmt: skip


def _forwarded_paths(app: QuartTrio) -> frozenset[str]:
    """The FAST_PATHS that Quart would hand to ``forward`` (none if a plugin hooked in)."""
    registries: list[dict[Any, list[Any]]] = [
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
        app.url_value_preprocessors,
    ]
    names = {
        getattr(hook, "__name__", "")
        for registry in registries
        for hooks in registry.values()
        for hook in hooks
    }
    if not names <= _OWN_HOOKS:
        return frozenset()
    adapter = app.url_map.bind("localhost")
    forwarded = set()
    for path in FAST_PATHS:
        try:
            endpoint, _ = adapter.match(path, method="POST")
        except NotFound:
            continue
        if endpoint == "forward":
            forwarded.add(path)
    return frozenset(forwarded)


def _first_values(query_string: bytes) -> dict[str, str]:
    """The query's parameters, the first of each name (as Quart's ``request.args.get``)."""
    values: dict[str, str] = {}
    if query_string:
        text = query_string.decode("latin-1")
        for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True, errors="replace"):
            values.setdefault(name, value)
    return values


async def _send_json(
    send: Send, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
