"""Forward one request to a child and stream its answer back as bytes, untouched.

The forwarding runs as a task in a nursery the app owns (not inside the response generator,
which a framework may abandon): it holds the model's lease for as long as the answer flows,
and hands the bytes over a small channel, so a slow client slows the child (back-pressure) and
a client that leaves closes the channel, which closes the child's response and so cancels its
generation. A child that dies mid-stream ends an SSE answer with an error event.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from router.errors import RouterError, Unavailable, sse_error_event
from router.plugin_types import Principal, Usage
from router.plugins import Plugins, call_each, has_implementations
from router.pool import ModelPool
from router.wire import WireError, WireResponse

log = logging.getLogger("router.proxy")

# Hop-by-hop headers, and those the router owns: never forwarded either way.
_DROPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "x-api-key",
    }
)
CHANNEL_CHUNKS = 16


@dataclass(frozen=True)
class ForwardRequest:
    model: str
    principal: Principal
    autoload: bool
    method: str
    path: str
    query: bytes
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class ForwardedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: trio.MemoryReceiveChannel[bytes]


async def start_forward(
    nursery: trio.Nursery, pool: ModelPool, plugins: Plugins, request: ForwardRequest
) -> ForwardedResponse:
    """Wait for the model, send it the request, and return once its headers are in.

    Raises what the pool raises (unknown model, failed load...) or Unavailable if the child
    does not answer; the body then streams from the returned channel.
    Cancellation: before the headers, gives up the request (and its place in the queue).
    """
    response: ForwardedResponse = await nursery.start(_forward, pool, plugins, request)
    return response


async def _forward(
    pool: ModelPool,
    plugins: Plugins,
    request: ForwardRequest,
    task_status: trio.TaskStatus[ForwardedResponse],
) -> None:
    started = time.monotonic()
    tail = _Tail(is_kept=has_implementations(plugins, "request_finished"))
    status = 0
    try:
        await _forward_with_lease(pool, request, task_status, tail)
        status = tail.status
    except RouterError as exc:
        status = exc.status
        raise
    finally:
        if tail.is_kept:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await _report(plugins, request, tail, time.monotonic() - started, status)


async def _report(
    plugins: Plugins, request: ForwardRequest, tail: _Tail, duration_s: float, status: int
) -> None:
    try:
        await call_each(
            plugins, "request_finished",
            model=request.model, principal=request.principal, usage=tail.usage(),
            duration_s=duration_s, status=status,
        )  # fmt: skip
    except Exception:  # the answer is out; a failing report must not take the router down
        log.exception("request_finished hook failed")


async def _forward_with_lease(
    pool: ModelPool,
    request: ForwardRequest,
    task_status: trio.TaskStatus[ForwardedResponse],
    tail: _Tail,
) -> None:
    async with pool.lease(request.model, autoload=request.autoload) as child:
        target = request.path
        if request.query:
            target += "?" + request.query.decode("latin-1")
        try:
            response = await child.request(
                request.method, target, _forwardable(request.headers), request.body
            )
        except WireError as exc:
            raise Unavailable(
                f"model {request.model!r} did not answer ({exc}); its process may have "
                "exited: see GET /models"
            ) from exc
        tail.status = response.status_code
        send, receive = trio.open_memory_channel[bytes](CHANNEL_CHUNKS)
        is_event_stream = response.content_type.startswith("text/event-stream")
        try:
            task_status.started(
                ForwardedResponse(
                    status=response.status_code,
                    headers=_forwardable(response.headers),
                    body=receive,
                )
            )
            async with send:
                await _pump(request.model, response, send, is_event_stream, tail)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


async def _pump(
    model: str,
    response: WireResponse,
    send: trio.MemorySendChannel[bytes],
    is_event_stream: bool,
    tail: _Tail,
) -> None:
    """Copy the child's bytes to the client; never raise into the app's nursery."""
    try:
        async for chunk in response.aiter_raw():
            tail.keep(chunk)
            await send.send(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client left; closing the response cancels the child's work
    except WireError as exc:
        log.warning("model %s broke off its answer: %s", model, exc)
        if is_event_stream:
            error = RouterError(
                f"model {model!r} stopped in the middle of its answer (its process may have "
                "crashed); retry the request"
            )
            try:
                await send.send(sse_error_event(error))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


class _Tail:
    """The last bytes of an answer, where OpenAI puts ``usage`` (body end, or last chunks)."""

    SIZE = 4096

    def __init__(self, *, is_kept: bool) -> None:
        self.is_kept = is_kept  # only a request_finished hook reads it: else skip the copies
        self.data = b""
        self.status = 0

    def keep(self, chunk: bytes) -> None:
        if self.is_kept:
            self.data = (self.data + chunk)[-self.SIZE :]

    def usage(self) -> Usage | None:
        start = self.data.rfind(b'"usage"')
        if start < 0:
            return None
        brace = self.data.find(b"{", start)
        end = self.data.find(b"}", brace)
        try:
            numbers = json.loads(self.data[brace : end + 1])
            return Usage(
                prompt_tokens=int(numbers.get("prompt_tokens", 0)),
                completion_tokens=int(numbers.get("completion_tokens", 0)),
                total_tokens=int(numbers.get("total_tokens", 0)),
            )
        except (ValueError, AttributeError):
            return None


def _forwardable(headers: list[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, value) for name, value in items if name.lower() not in _DROPPED_HEADERS]
