"""Forward one request to a child and stream its answer back as bytes, untouched.

The forwarding runs as a task in a nursery that the HTTP request owns (``owning_forwards``),
not inside the response generator, which Quart runs only once the route has returned: it holds
the model's lease for as long as the answer flows, and hands the bytes over a small channel, so
a slow client slows the child (back-pressure) and a client that leaves closes the channel. The
request's end cancels what is left of it, however the request ended, even when nothing ever
read the answer (the client left before Quart began to send it): the lease is given back, and
closing the child's response cancels its generation.

A child that dies or stays silent (``timeout_s``, the router's ``-to/--timeout``) before its
answer's head makes a 503; after, it ends an SSE answer with an error event, and any other
answer with ``BrokenOff``, on which the app cuts the client's connection, so that a part
is never taken for the whole.

A server that runs the app in the connection's own task until the answer is out (the router's)
needs neither the task nor the channel: ``relay`` forwards in the caller's task, with the same
errors, deadlines and usage report.

Only end-to-end headers cross: hop-by-hop ones (and any a ``Connection`` header names), the
client's ``Expect`` (the router's server answers it), and the router's own never do.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from router.edge import observe, stream_pump
from router.edge.asgi_lifespan import ASGIApp, Message
from router.edge.lean_http import ThreadWriter
from router.edge.load_progress import LoadProgress, wants_progress
from router.edge.raw_asgi import Receive, Send
from router.edge.sse import is_event_stream
from router.edge.usage import UsageCounter
from router.errors import (
    ChildTimeout,
    CutConnection,
    RouterError,
    Unavailable,
    WireError,
    sse_error_event,
)
from router.hooks.plugin_types import Principal, Usage
from router.hooks.plugins import Plugins, call_each, has_implementations
from router.models.pool import ModelPool
from router.models.remote import upstream_request
from router.models.state import ModelState
from router.processes.wire import ChildConnections, RequestBody, WireResponse

log = logging.getLogger("router.edge.proxy")

# Hop-by-hop headers, and those the router owns (its server writes its own Date and Server):
# never forwarded either way.
_DROPPED_HEADERS = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "expect",
        "date",
        "server",
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
# llama-server's LLAMA_SERVER_DEBUG_FAKE_TIMING (server-models.cpp): a forward waits 2 s once
# admitted, so its model counts as busy that long; llama.cpp's own router tests build their
# queue cases on it (tests/llama_cpp_router). Never set in production.
FAKE_TIMING_S = 2.0 if os.environ.get("LLAMA_SERVER_DEBUG_FAKE_TIMING") else 0.0
# No page of another origin may read an answer: a backend's own CORS headers (llama-server
# reflects any ``Origin``) never pass.
CORS_PREFIX = "access-control-"

AnswerSend = Callable[[dict[str, Any]], Awaitable[None]]
# Where a request's ASGI scope holds the nursery its forwards run in (``owning_forwards``).
FORWARDS_SCOPE_KEY = "llama_router.forwards"


@dataclass(frozen=True)
class ForwardRequest:
    state: ModelState  # the model the edge resolved the request to, once
    principal: Principal
    autoload: bool
    method: str
    path: str
    query: bytes
    headers: list[tuple[str, str]]
    body: RequestBody  # sent from this buffer as it is: a large body is never copied
    timeout_s: float = math.inf  # -to/--timeout: the longest silence from the child
    load_progress: bool = False  # --stream-load-progress (served on the raw path only)

    @property
    def model(self) -> str:
        return self.state.spec.id


@dataclass(frozen=True)
class BrokenOff:
    """Sent in place of the rest of an answer (not an event stream) the child broke off."""

    reason: str


@dataclass
class ForwardedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: trio.MemoryReceiveChannel[bytes | BrokenOff]


def owning_forwards(app: ASGIApp) -> ASGIApp:
    """``app`` (a Quart app's ``asgi_app``), with a nursery for each HTTP request, in which the
    forwards started for it run (``start_forward``), cancelled once ``app`` is done with it.

    Quart sends an answer's body after the route has returned, and never begins to if the
    client left in between (or a request hook after the route failed): a body iterator that
    owned the forward would never run, and the forward, blocked on a channel nobody reads, would
    keep the model's lease until ``timeout_s``. Owned by the request, it ends with it.
    Cancellation: as the request's (the forwards under way are cancelled too).
    """

    async def serve(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        failure: Exception | None = None
        async with trio.open_nursery() as forwards:
            try:
                await app({**scope, FORWARDS_SCOPE_KEY: forwards}, receive, send)
            except Exception as error:  # raised as itself, not in the nursery's group
                failure = error
            finally:
                forwards.cancel_scope.cancel()
        if failure is not None:
            raise failure

    return serve


async def start_forward(
    scope: Mapping[str, Any], pool: ModelPool, plugins: Plugins, request: ForwardRequest
) -> ForwardedResponse:
    """Wait for the model, send it the request, and return once its headers are in.

    The forward runs in the nursery of the HTTP request whose ASGI ``scope`` is given (Quart's
    ``request.scope``, of an app wrapped by ``owning_forwards``): it ends with that request,
    whether or not its body was read. Raises what the pool raises (unknown model, failed
    load...) or Unavailable if the child does not answer; the body then streams from the
    returned channel.
    Cancellation: before the headers, gives up the request (and its place in the queue).
    """
    nursery: trio.Nursery | None = scope.get(FORWARDS_SCOPE_KEY)
    if nursery is None:
        raise RuntimeError("start_forward needs an app whose asgi_app owning_forwards wraps")
    response: ForwardedResponse = await nursery.start(_forward, pool, plugins, request)
    return response


async def _forward(
    pool: ModelPool,
    plugins: Plugins,
    request: ForwardRequest,
    task_status: trio.TaskStatus[ForwardedResponse],
) -> None:
    async with _reported(plugins, request, pool) as outcome:
        await _forward_with_lease(pool, request, task_status, outcome)


@dataclass
class _Outcome:
    counter: UsageCounter | None  # None: nothing reads the usage
    status: int = 0


@asynccontextmanager
async def _reported(
    plugins: Plugins, request: ForwardRequest, pool: ModelPool
) -> AsyncIterator[_Outcome]:
    """The request's usage counter and status, given to ``request_finished`` hooks and to the
    request's record (``observe.py``: the access log, the metrics) when the block ends,
    however it ends (a RouterError's status is the status)."""
    started = time.monotonic()
    record = observe.forward_began(pool, request.state)
    # Only a hook or the record reads the usage: without them, nothing is kept or parsed.
    has_readers = has_implementations(plugins, "request_finished")
    outcome = _Outcome(UsageCounter() if has_readers or record is not None else None)
    try:
        yield outcome
    except RouterError as exc:
        outcome.status = exc.status
        raise
    finally:
        usage = outcome.counter.usage() if outcome.counter is not None else None
        if record is not None:
            observe.forward_ended(record, usage)
        if has_readers:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                duration_s = time.monotonic() - started
                await _report(plugins, request, usage, duration_s, outcome.status)


async def _report(
    plugins: Plugins,
    request: ForwardRequest,
    usage: Usage | None,
    duration_s: float,
    status: int,
) -> None:
    try:
        await call_each(
            plugins, "request_finished",
            model=request.model, principal=request.principal, usage=usage,
            duration_s=duration_s, status=status,
        )  # fmt: skip
    except Exception:  # the answer is out; a failing report must not take the router down
        log.exception("request_finished hook failed")


async def _ask(child: ChildConnections, request: ForwardRequest) -> WireResponse:
    """Send ``request`` to ``child``; its answer once the head is in (else Unavailable)."""
    if FAKE_TIMING_S:
        await trio.sleep(FAKE_TIMING_S)  # leased: the model counts as busy meanwhile
    body, query, timeout_s = request.body, request.query, request.timeout_s
    upstream = request.state.spec.upstream
    if upstream is not None:  # served elsewhere: named by its id there, with its own deadline
        body, query = upstream_request(upstream, body, query)
        timeout_s = upstream.timeout_s or timeout_s
    target = request.path
    if query:
        target += "?" + query.decode("latin-1")
    try:
        return await child.request(
            request.method, target, _forwardable(request.headers), body, timeout_s=timeout_s
        )
    except ChildTimeout as exc:
        raise Unavailable(
            f"model {request.model!r} did not answer within {timeout_s:g} s (the "
            "router's -to/--timeout, or its conf.d 'timeout'): it may be hung or overloaded"
        ) from exc
    except WireError as exc:
        gone = "its process may have exited" if upstream is None else "its server may be away"
        raise Unavailable(
            f"model {request.model!r} did not answer ({exc}); {gone}: see GET /models"
        ) from exc


async def _forward_with_lease(
    pool: ModelPool,
    request: ForwardRequest,
    task_status: trio.TaskStatus[ForwardedResponse],
    outcome: _Outcome,
) -> None:
    """Cancellation: after the headers (the request that owns the forward has ended), as a
    client that left: the status reported is the child's."""
    async with pool.lease(request.state, autoload=request.autoload) as child:
        observe.forward_admitted()
        response = await _ask(child, request)
        outcome.status = response.status_code
        counter = outcome.counter
        if counter is not None:
            counter.begin(response.content_type)
        send, receive = trio.open_memory_channel[bytes | BrokenOff](CHANNEL_CHUNKS)
        is_stream = is_event_stream(response.content_type)
        try:
            task_status.started(
                ForwardedResponse(
                    status=response.status_code,
                    headers=_forwardable(response.headers),
                    body=receive,
                )
            )
            async with send:
                await _pump(request, response, send, is_stream, counter)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


async def _pump(
    request: ForwardRequest,
    response: WireResponse,
    send: trio.MemorySendChannel[bytes | BrokenOff],
    is_stream: bool,
    counter: UsageCounter | None,
) -> None:
    """Copy the child's bytes to the client; never raise into the app's nursery.

    A client that takes nothing for ``timeout_s`` (it stopped reading but keeps its
    connection) is given up on, as llama-server's ``-to`` does, so it cannot hold the
    model's slot for ever.
    """
    model = request.model
    try:
        async for chunk in response.aiter_raw():
            if counter is not None:
                counter.feed(chunk)
            with trio.move_on_after(request.timeout_s) as waiting:
                await send.send(chunk)
            if waiting.cancelled_caught:
                log.warning(
                    "model %s: the client read nothing for %g s; its answer is cut",
                    model, request.timeout_s,
                )  # fmt: skip
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client left; closing the response cancels the child's work
    except WireError as exc:
        reason = _broken_off(model, exc)
        ending = sse_error_event(RouterError(f"{reason}; retry the request"), request.path)
        try:
            await send.send(ending if is_stream else BrokenOff(reason))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def _broken_off(model: str, exc: WireError) -> str:
    """Why the answer of ``model`` stopped short (``exc``), logged, for the client."""
    log.warning("model %s broke off its answer: %s", model, exc)
    if isinstance(exc, ChildTimeout):
        return f"model {model!r} sent nothing more for too long; it may be hung"
    return f"model {model!r} stopped in the middle of its answer (its process may have crashed)"


async def relay(
    pool: ModelPool,
    plugins: Plugins,
    request: ForwardRequest,
    send: AnswerSend,
    *,
    thread_writer: Callable[[], ThreadWriter | None] | None = None,
) -> None:
    """Forward ``request`` and write the answer to ASGI ``send``, all in the caller's task.

    For a server that runs the app in the connection's own task until the answer is out (the
    router's, ``lean_http``): no task, no channel between the child and the client. The answer
    keeps the child's ``Content-Length`` when it has one (one write for head and body). With
    ``thread_writer`` (``lean_http``'s scope extension), a streamed answer's body is copied by
    a worker thread (``stream_pump``) while there is room for one.
    Raises RouterError before the answer's head (nothing was sent: answer it); after, a child
    that breaks off ends an event stream with an error event, and anything else with
    CutConnection, on which the server closes the connection. The usage is reported as
    ``start_forward``'s is.
    Cancellation: gives up the request (and its place in the queue); an answer under way is
    cut, and closing the child's connection cancels its generation.
    """
    progress = None
    if request.load_progress and wants_progress(request.state, request.body):
        progress = LoadProgress(request.model, send, request.path)  # comments while it loads
        send = progress.send
    async with _reported(plugins, request, pool) as outcome:
        try:
            async with (
                pool.lease(request.state, autoload=request.autoload)
                if progress is None
                else progress.leased(pool, request.state, autoload=request.autoload)
            ) as child:
                observe.forward_admitted()
                response = await _ask(child, request)
                try:
                    outcome.status = response.status_code
                    await _relay_answer(
                        request.model, response, send, outcome.counter, path=request.path,
                        thread_writer=thread_writer if progress is None else None,
                    )  # fmt: skip
                finally:
                    with trio.CancelScope(shield=True):
                        await response.aclose()
        except RouterError as error:
            if progress is None or not progress.has_begun:
                raise
            outcome.status = error.status  # the stream had begun: it ends with the error
            await progress.fail(error)


async def _relay_answer(
    model: str,
    response: WireResponse,
    send: AnswerSend,
    counter: UsageCounter | None,
    *,
    path: str = "",
    thread_writer: Callable[[], ThreadWriter | None] | None = None,
) -> None:
    if counter is not None:
        counter.begin(response.content_type)
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in _forwardable(response.headers)
        if not name.lower().startswith(CORS_PREFIX)
    ]
    length = response.content_length
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    writer = (
        thread_writer()
        if thread_writer is not None
        and response.status_code < 400  # an error's body passes the send wrappers, observed
        and is_event_stream(response.content_type)
        and response.can_be_read_from_a_thread
        else None
    )
    sent = 0
    try:
        if writer is None or not await stream_pump.pump(response, writer, counter):
            async for chunk in response.aiter_raw():
                if counter is not None:
                    counter.feed(chunk)
                sent += len(chunk)
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": sent != length}
                )
    except WireError as exc:
        reason = _broken_off(model, exc)
        if length is not None or not is_event_stream(response.content_type):
            raise CutConnection(reason) from None
        ending = sse_error_event(RouterError(f"{reason}; retry the request"), path)
        await send({"type": "http.response.body", "body": ending, "more_body": False})
        return
    if length is None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _forwardable(headers: list[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """``headers`` less the hop-by-hop ones, those named by ``Connection`` among them."""
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    dropped = _DROPPED_HEADERS
    for name, value in items:
        if name.lower() == "connection":
            dropped = dropped.union(token.strip().lower() for token in value.split(","))
    return [(name, value) for name, value in items if name.lower() not in dropped]
