"""Progress for a streaming client while its model loads (``--stream-load-progress``, off by
default): SSE comments, ``: loading MODEL (1.2 s)``, about once a second, instead of silence.

A comment is what every SSE client skips, so the stream that follows is the child's own. The
price is that the answer's head (200, ``text/event-stream``) leaves before the model has
answered: what fails after it (the load, the queue, the child's own refusal of the request)
ends the stream with one ``data: {"error": ...}`` event, as an error in the middle of a stream
does (on Anthropic's routes, its ``event: error`` in its shape: ``errors.shaped_for``). So
the head is sent only once the request has waited ``FIRST_COMMENT_S`` (the pool refuses at
once what it refuses without waiting: those keep their own status), and only for
a ``"stream": true`` request whose model was not loaded when it came.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from router.edge.asgi_lifespan import Message
from router.edge.raw_asgi import Send
from router.edge.sse import is_event_stream
from router.errors import (
    ANTHROPIC_PATHS,
    RouterError,
    shaped_for,
    sse_error_body_event,
    sse_error_event,
)
from router.models.pool import ModelPool
from router.models.scheduler import NEEDS_NO_LOAD
from router.models.state import ModelState
from router.processes.wire import ChildConnections, RequestBody

FIRST_COMMENT_S = 0.1  # a refusal comes sooner; a load (a process, a model file) later
COMMENT_EVERY_S = 1.0
MAX_ERROR_BODY_BYTES = 64 * 1024  # a child's refusal, turned into the stream's error event

_HEAD: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]


def is_streaming_request(body: bytes | bytearray) -> bool:
    """Whether a JSON body asks for ``"stream": true``."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


class LoadProgress:
    """One streaming request's answer while its model loads: the comments, then the child's
    stream sent through ``send`` as the rest of the stream already begun. ``path`` is the
    route asked (its errors take that route's shape)."""

    def __init__(self, model: str, send: Send, path: str = "") -> None:
        self._model = model
        self._send = send
        self._path = path
        self.has_begun = False  # the head went out: what follows is part of one stream
        self._refusal: bytearray | None = None  # the child refused: its body, to one event
        self._refusal_status = 500

    @asynccontextmanager
    async def leased(
        self, pool: ModelPool, state: ModelState, *, autoload: bool
    ) -> AsyncIterator[ChildConnections]:
        """``pool.lease``, with a comment to the client about once a second while it waits.

        Raises what the lease raises. Cancellation: as ``pool.lease``.
        """
        async with AsyncExitStack() as stack:
            is_over = trio.Event()
            failure: RouterError | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._comment_until, is_over)
                try:
                    child = await stack.enter_async_context(pool.lease(state, autoload=autoload))
                except RouterError as error:
                    failure = error  # raised below, as itself (not in the nursery's group)
                finally:
                    is_over.set()  # the comment being written is finished, never cut
            if failure is not None:
                raise failure
            yield child

    async def _comment_until(self, is_over: trio.Event) -> None:
        started = trio.current_time()
        wait_s = FIRST_COMMENT_S
        while True:
            with trio.move_on_after(wait_s):
                await is_over.wait()
            if is_over.is_set():
                return
            if not self.has_begun:
                self.has_begun = True
                await self._send({"type": "http.response.start", "status": 200, "headers": _HEAD})
            waited_s = trio.current_time() - started
            comment = f": loading {self._model} ({waited_s:.1f} s)\n\n".encode()
            await self._send({"type": "http.response.body", "body": comment, "more_body": True})
            wait_s = COMMENT_EVERY_S

    async def send(self, message: Message) -> None:
        """The answer's ASGI ``send``: as it is until the stream has begun; then its head is
        dropped, and a refusal's body (not 200, or not a stream) becomes one error event."""
        if not self.has_begun:
            await self._send(message)
        elif message["type"] == "http.response.start":
            headers = dict(message.get("headers", ()))
            content_type = headers.get(b"content-type", b"")
            if message["status"] != 200 or not is_event_stream(content_type.decode("latin-1")):
                self._refusal = bytearray()
                self._refusal_status = int(message["status"])
        elif self._refusal is None:
            await self._send(message)
        else:
            if len(self._refusal) < MAX_ERROR_BODY_BYTES:
                self._refusal += message.get("body", b"")[:MAX_ERROR_BODY_BYTES]
            if not message.get("more_body", False):
                refusal = bytes(self._refusal)
                await self._end_with(
                    _refusal_event(self._model, self._refusal_status, refusal, self._path)
                )

    async def fail(self, error: RouterError) -> None:
        """End the stream begun with ``error`` (raised after the head went out)."""
        await self._end_with(sse_error_event(error, self._path))

    async def _end_with(self, event: bytes) -> None:
        await self._send({"type": "http.response.body", "body": event, "more_body": False})


def wants_progress(state: ModelState, body: RequestBody) -> bool:
    """Whether a request is one to keep posted: its model not loaded yet, and it streams (the
    body is parsed only then)."""
    if state.status in NEEDS_NO_LOAD:
        return False
    return is_streaming_request(body if not isinstance(body, memoryview) else bytes(body))


def _refusal_event(model: str, status: int, body: bytes, path: str) -> bytes:
    """A child's answer that is not a stream (``status``, ``body``), as the one error event
    that ends the stream, in the shape of the route ``path``."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        if path in ANTHROPIC_PATHS and parsed.get("type") != "error":  # OpenAI's shape
            message = str(error.get("message", ""))
            parsed = shaped_for(path, {"error": {"message": message, "code": status}})
        return sse_error_body_event(parsed, path)
    text = body.decode(errors="replace").strip()[:500]
    return sse_error_event(RouterError(f"model {model!r} refused the request: {text}"), path)
