"""Serve an ASGI app over HTTP/1.1 on one listening socket: a small server on trio and
httptools (llhttp, the parser of Node.js and uvicorn), with ``http_server.serve``'s interface
and its guarantees, at a fraction of Hypercorn's cost per request.

Where the time goes is where this module saves it: one task per connection runs the app for
each request in turn, in itself (no task hop to reach the app, none to read the body); the
socket is read and written without trio's stream layers (a read or write that can finish at
once does, without a trip through the scheduler); an answer whose length is known leaves in
one write, head and body together.

What a client cannot do:

- hold more than ``max_connections`` connections (more wait, unaccepted, in the backlog);
- send a head (request line and headers) longer than ``config.h11_max_incomplete_size`` bytes
  (414, 431) or with more than ``MAX_HEADERS`` headers (431), or a body longer than
  ``max_body_bytes`` (413, as soon as ``Content-Length`` says so); each answered with an
  OpenAI-style JSON error body and ``Connection: close``; a malformed request gets a 400, and
  anything pipelined behind it is never read;
- take longer than ``config.keep_alive_timeout`` to send a head, from the connection's start
  or the end of the previous answer; idle connections close then (slowloris);
- block an answer for more than ``send_timeout_s`` by not reading it: the connection closes;
- smuggle a request: ``Content-Length`` with ``Transfer-Encoding`` is a 400, and a connection
  whose request body was not read to its end closes after the answer.

What an app gets: an ASGI 3 ``scope`` as Hypercorn builds it; the body as it arrives
(``Expect: 100-continue`` answered when the app first asks for the body); ``http.disconnect``
from ``receive`` once the client has gone or the answer is complete; pipelined requests, one at a
time, in order; chunked answers when no ``Content-Length`` is set, each body message written at
once (Server-Sent Events); the lifespan protocol (startup before the first connection, shutdown
after the last). An app that raises before answering makes a 500; after, the connection closes
without the last chunk, so the client knows the answer is incomplete (``CutConnection`` does
this on purpose, without a traceback).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote

import httptools
import trio
from hypercorn.config import Config

from router.edge.asgi_lifespan import ASGI_VERSION, ASGIApp, Lifespan, LifespanFailed, Message
from router.errors import CutConnection

__all__ = ["THREAD_WRITER", "ClientDisconnected", "LifespanFailed", "ThreadWriter", "serve"]

log = logging.getLogger("router.edge.lean_http")

MAX_HEADERS: Final = 100  # as cpp-httplib (llama-server) allows
READ_SIZE: Final = 64 * 1024
# The kernel's send buffer of a connection. Left to itself, loopback TCP grows it to megabytes,
# so a client that stops reading a stream would be noticed (``send_timeout_s``) only minutes
# later, its model's slot held meanwhile; this is room for a few writes of any answer.
SEND_BUFFER_BYTES: Final = 256 * 1024
ACCEPT_RETRY_S: Final = 0.1  # out of file descriptors: wait for some to close
# The ASGI scope's extension that gives a ThreadWriter for the answer under way (or None).
THREAD_WRITER: Final = "llama_router.thread_writer"

_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[^\x00\r\n]*")
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in HTTPStatus
}


class ClientDisconnected(OSError):
    """Raised by ``send`` once the client has gone (as ASGI asks): what was sent is lost."""


async def serve(
    app: ASGIApp,
    config: Config,
    sock: socket.socket,
    *,
    max_connections: int,
    send_timeout_s: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    max_body_bytes: int | None = None,
) -> None:
    """Serve ``app`` on the listening ``sock`` until ``shutdown_trigger`` returns.

    ``task_status.started()`` once the app has started (ASGI lifespan) and connections are
    accepted. After the trigger, no connection is accepted, idle ones close, and running
    requests have ``config.graceful_timeout`` seconds (read then) to finish; then every
    connection still open is closed and the app's lifespan ends. A client that takes nothing
    for ``send_timeout_s`` loses its connection. ``max_body_bytes`` (none by default: the app
    decides) refuses longer request bodies with a 413 before the app sees them.
    Raises LifespanFailed if the app does not start.
    Cancellation: every connection closes at once; the lifespan's shutdown is not run.
    """
    server = _Server(app, config, send_timeout_s, max_body_bytes)
    sock.setblocking(False)
    lifespan = Lifespan(app, config)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.run)
        refusal = await lifespan.startup()
        if refusal is None:
            server.state = lifespan.state
            await _serve_connections(server, sock, max_connections, shutdown_trigger, task_status)
            await lifespan.shutdown()
        lifespan_nursery.cancel_scope.cancel()
    if refusal is not None:
        raise LifespanFailed(refusal)


async def _serve_connections(
    server: _Server,
    sock: socket.socket,
    max_connections: int,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[None],
) -> None:
    async with trio.open_nursery() as connections:
        task_status.started()
        try:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(server.accept, sock, max_connections, connections)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
        finally:
            server.terminate()
            graceful_timeout = server.config.graceful_timeout
            connections.cancel_scope.deadline = trio.current_time() + graceful_timeout


class _Refused(Exception):
    """A request the server answers itself, with ``status`` (or none: it just closes)."""

    def __init__(self, status: int | None, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server:
    """What the connections share: the app, the settings, and the idle ones to close."""

    def __init__(
        self, app: ASGIApp, config: Config, send_timeout_s: float, max_body_bytes: int | None
    ) -> None:
        self.app = app
        self.config = config
        self.send_timeout_s = send_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes: int = config.h11_max_incomplete_size
        self.state: dict[str, Any] = {}
        self.is_terminating = False
        self.idle: set[trio.CancelScope] = set()
        self._date_second = -1
        self._date_header = b""

    async def accept(
        self, sock: socket.socket, max_connections: int, nursery: trio.Nursery
    ) -> None:
        """Accept connections while fewer than ``max_connections`` are open; serve each in
        ``nursery``. Cancellation: stops accepting; no connection is left unserved."""
        slots = trio.Semaphore(max_connections)
        is_tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        while True:
            await slots.acquire()
            try:
                conn = await _accept_one(sock)
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(self._serve_then_free, conn, slots, is_tcp)

    async def _serve_then_free(
        self, conn: socket.socket, slots: trio.Semaphore, is_tcp: bool
    ) -> None:
        """Serve ``conn``, then close it and free its slot, whatever happened: a bug met on
        one connection is logged, and the others go on."""
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            if is_tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _Connection(self, conn).serve()
        except OSError:
            pass  # the client had gone before it was served
        except Exception:
            log.exception("a connection failed")
        finally:
            conn.close()  # if serve had no chance to
            slots.release()

    def terminate(self) -> None:
        """No more requests: idle connections close now, busy ones after their answer."""
        self.is_terminating = True
        for scope in self.idle:
            scope.cancel()

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date_header


async def _accept_one(sock: socket.socket) -> socket.socket:
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
        except OSError as exc:
            if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                log.warning("cannot accept a connection (%s): retrying", exc.strerror)
                await trio.sleep(ACCEPT_RETRY_S)
            elif not isinstance(exc, ConnectionError | InterruptedError):
                raise
        else:
            return conn


class _Request:
    """One parsed request head, and its body as far as it has arrived."""

    __slots__ = (
        "body",
        "expects_continue",
        "headers",
        "http_version",
        "is_complete",
        "is_end_delivered",
        "keep_alive",
        "method",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        expects_continue: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.expects_continue = expects_continue
        self.body: list[bytes] = []
        self.is_complete = False
        self.is_end_delivered = False


class _Connection:
    """One client's connection: parse its requests, run the app for each, in order."""

    def __init__(self, server: _Server, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        self._parser = httptools.HttpRequestParser(self)
        # Both framings reach on_headers_complete, which refuses them in words a client can act
        # on (llhttp's own refusal names only the header it met second).
        self._parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self._requests: deque[_Request] = deque()
        self._failure: _Refused | None = None
        self._is_disconnected = False
        self._is_writing = False
        self._served = 0
        self._client, self._local = _addresses(sock)
        # the head being parsed
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._is_in_head = False
        self._expects_continue = False
        self._body_bytes = 0
        # the answer being sent
        self._request: _Request | None = None
        self._is_started = False
        self._is_complete = False
        self._is_head_sent = False
        self._head = b""
        self._is_chunked = False
        self._has_no_body = False
        self._length: int | None = None
        self._sent = 0
        self._must_close = False
        self._watching: trio.CancelScope | None = None

    # ---- the connection's life ----------------------------------------------------------

    async def serve(self) -> None:
        """Serve requests until the client leaves, one must close, or the server stops.

        Cancellation: the connection closes at once.
        """
        try:
            while (request := await self._next_request()) is not None:
                if not await self._serve(request):
                    break
        finally:
            self._close()

    async def _next_request(self) -> _Request | None:
        """The next request, once its head has arrived; None when the connection must close
        (after answering a refused one)."""
        if not self._requests and self._failure is None and not self._server.is_terminating:
            server = self._server
            deadline = trio.current_time() + server.config.keep_alive_timeout
            with trio.CancelScope(deadline=deadline) as idle:
                server.idle.add(idle)
                try:
                    while not self._requests and self._failure is None:
                        if self._is_in_head:
                            server.idle.discard(idle)  # a request has begun: it may finish
                        data = await self._read()
                        if not data:
                            return None
                        self._feed(data)
                finally:
                    server.idle.discard(idle)
            if idle.cancelled_caught:
                return None
        if self._requests:
            return self._requests[0]
        if self._failure is not None and self._failure.status is not None:
            await self._refuse(self._failure)
        return None

    async def _serve(self, request: _Request) -> bool:
        """Run the app for ``request``; whether the connection may serve another."""
        server = self._server
        self._request = request
        self._is_started = self._is_complete = self._is_head_sent = False
        self._must_close = server.is_terminating or not request.keep_alive
        self._served += 1
        if self._served >= server.config.keep_alive_max_requests:
            self._must_close = True
        path, _, query = request.target.partition(b"?")
        scope: Message = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": request.http_version,
            "method": request.method,
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": server.config.root_path,
            "headers": request.headers,
            "client": self._client,
            "server": self._local,
            "state": server.state.copy(),
            "extensions": {THREAD_WRITER: self._thread_writer},
        }
        try:
            await server.app(scope, self._receive, self._send)
        except* CutConnection:
            self._must_close = True  # the reason was logged where it arose
        except* ClientDisconnected:
            self._must_close = True  # nobody to tell
        except* Exception:
            self._must_close = True
            log.exception("the app failed on %s %s", request.method, path)
        self._requests.popleft()
        if not self._is_started:
            failure = self._failure
            if failure is None or failure.status is None or request.is_complete:
                failure = _Refused(500, "internal error: the app did not answer")
            await self._refuse(failure)
        elif not self._is_complete:
            self._must_close = True  # the client sees the answer cut off
            if not self._is_head_sent:
                self._is_head_sent = True
                await self._write(self._end_head())
        return not (self._must_close or self._is_disconnected or not request.is_complete)

    # ---- ASGI ---------------------------------------------------------------------------

    async def _receive(self) -> Message:
        request = self._request
        assert request is not None
        while True:
            if request.body:
                body = request.body[0] if len(request.body) == 1 else b"".join(request.body)
                request.body.clear()
                request.is_end_delivered = request.is_complete
                return {"type": "http.request", "body": body, "more_body": not request.is_complete}
            if request.is_complete and not request.is_end_delivered:
                request.is_end_delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self._is_disconnected or self._is_complete:
                return {"type": "http.disconnect"}
            if request.is_complete:
                await self._watch_for_disconnect()
            elif request.expects_continue and not self._is_started and not self._is_writing:
                request.expects_continue = False
                await self._write(_CONTINUE)
            elif self._failure is not None:
                return {"type": "http.disconnect"}  # the body broke off: the app cannot go on
            else:
                await self._read_body(request)

    async def _read_body(self, request: _Request) -> None:
        """Read more of the request's body, within ``config.read_timeout`` (if any)."""
        read_timeout = self._server.config.read_timeout
        with trio.move_on_after(read_timeout if read_timeout is not None else math.inf):
            data = await self._read()
            if not data:
                self._disconnected()
                return
            self._feed(data)
            if not request.is_complete:
                await trio.lowlevel.checkpoint()  # a client that sends fast must not starve others
            return
        self._failure = _Refused(408, f"the body did not arrive within {read_timeout} s")

    async def _watch_for_disconnect(self) -> None:
        """Read until the client leaves, or the answer is complete. Of what else comes, only
        the next request's head is parsed: the rest waits in the socket."""
        try:
            with trio.CancelScope() as self._watching:
                while len(self._requests) == 1 and self._failure is None:
                    data = await self._read()
                    if not data:
                        self._disconnected()
                        return
                    self._feed(data)
                await trio.sleep_forever()
        finally:
            self._watching = None

    async def _send(self, message: Message) -> None:
        if self._is_disconnected:
            raise ClientDisconnected("the client has gone")
        kind = message["type"]
        if kind == "http.response.body":
            if not self._is_started or self._is_complete:
                raise RuntimeError("http.response.body outside an answer")
            body: bytes = message.get("body", b"")
            more_body: bool = message.get("more_body", False)
            if self._has_no_body:
                body = b""
            elif self._is_chunked:
                if body:
                    body = b"%x\r\n%b\r\n" % (len(body), body)
                if not more_body:
                    body += b"0\r\n\r\n"
            elif self._length is not None:
                self._sent += len(body)
                if self._sent > self._length:
                    raise RuntimeError("the answer's body is longer than its Content-Length")
                if not more_body and self._sent < self._length:
                    self._must_close = True
            if not self._is_head_sent:
                self._is_head_sent = True
                head = self._end_head()
                if len(body) > READ_SIZE:
                    await self._write_or_raise(head)  # not copied into one: it is large
                else:
                    body = head + body
            if body:
                await self._write_or_raise(body)
            if not more_body:
                # Only now: an app may stop everything once it hears of the disconnect.
                self._is_complete = True
                if self._watching is not None:
                    self._watching.cancel()
        elif kind == "http.response.start":
            if self._is_started:
                raise RuntimeError("http.response.start sent twice")
            self._start(message["status"], message.get("headers", ()))
            self._is_started = True
            if self._length is None and not self._has_no_body:
                # No length: a stream, whose head the client should see at once.
                if self._request is not None and self._request.http_version == "1.1":
                    self._is_chunked = True
                    self._head += b"transfer-encoding: chunked\r\n"
                self._is_head_sent = True
                await self._write_or_raise(self._end_head())
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _thread_writer(self) -> ThreadWriter | None:
        """A writer of this answer's body for a worker thread, or None unless the answer has
        begun, chunked, and nothing else is writing to the client."""
        if (
            self._is_started
            and self._is_head_sent
            and self._is_chunked
            and not (self._is_complete or self._is_disconnected or self._is_writing)
        ):
            return ThreadWriter(self)
        return None

    async def _write_or_raise(self, data: bytes) -> None:
        if not await self._write(data):
            raise ClientDisconnected("the client has gone")

    def _start(self, status: int, headers: Any) -> None:
        """The head of the answer, but for its framing and Connection, which come later."""
        request = self._request
        assert request is not None
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        self._length = None
        self._is_chunked = False
        self._sent = 0
        for name, value in headers:
            lower = name.lower()
            if lower in _FRAMING_HEADERS:
                if lower == b"content-length":
                    self._length = int(value)
                    lines.append(b"content-length: %d\r\n" % self._length)
                elif b"close" in value.lower():
                    self._must_close = True
                continue  # transfer-encoding: the server frames the body itself
            if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"invalid header in the answer: {name!r}: {value!r}")
            lines.append(b"%b: %b\r\n" % (name, value))
        self._has_no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        server = self._server
        if server.config.include_date_header:
            lines.append(server.date_header())
        if server.config.include_server_header:
            lines.append(b"server: llama-router\r\n")
        self._head = b"".join(lines)

    def _end_head(self) -> bytes:
        request = self._request
        assert request is not None
        if not self._is_chunked and self._length is None and not self._has_no_body:
            self._must_close = True  # no length, not chunked (HTTP/1.0): the close ends it
        if self._server.is_terminating or not request.is_complete:
            self._must_close = True
        if self._must_close:
            return self._head + b"connection: close\r\n\r\n"
        if request.http_version == "1.0":
            return self._head + b"connection: keep-alive\r\n\r\n"
        return self._head + b"\r\n"

    # ---- answers of the server's own ----------------------------------------------------

    async def _refuse(self, refused: _Refused) -> None:
        """Answer with ``refused``'s status and an OpenAI-style error body, then close."""
        status = refused.status
        assert status is not None
        self._must_close = True
        if self._is_disconnected:
            return
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = json.dumps({"error": {"message": refused.message, "type": kind, "code": status}})
        head = _STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status)
        await self._write(
            head
            + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + self._server.date_header()
            + b"connection: close\r\n\r\n"
            + body.encode()
        )

    # ---- the parser's callbacks (httptools) ---------------------------------------------

    def on_message_begin(self) -> None:
        self._target = b""
        self._headers = []
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._body_bytes = 0
        self._is_in_head = True
        self._expects_continue = False

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > self._server.max_head_bytes:
            raise _Refused(414, f"the request target is longer than {self._head_limit()}")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes + len(self._target) > self._server.max_head_bytes:
            raise _Refused(431, f"the request's headers are longer than {self._head_limit()}")
        if not self._is_in_head:
            return  # a trailer of a chunked body: read, but not kept
        if len(self._headers) == MAX_HEADERS:
            raise _Refused(431, f"the request has more than {MAX_HEADERS} headers")
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self._expects_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._is_in_head = False
        self._head_bytes = 0  # trailers count afresh
        parser = self._parser
        names = {name for name, _ in self._headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            raise _Refused(
                400, "the request has both Content-Length and Transfer-Encoding; send only one"
            )
        max_body_bytes = self._server.max_body_bytes
        if max_body_bytes is not None:
            for name, value in self._headers:
                if name == b"content-length" and int(value) > max_body_bytes:
                    raise _Refused(413, f"the body is longer than {max_body_bytes} bytes")
        method = parser.get_method()
        self._requests.append(
            _Request(
                _METHODS.get(method) or method.decode("ascii"),
                self._target,
                self._headers,
                parser.get_http_version(),
                parser.should_keep_alive(),
                self._expects_continue,
            )
        )

    def on_body(self, body: bytes) -> None:
        max_body_bytes = self._server.max_body_bytes
        if max_body_bytes is not None:
            self._body_bytes += len(body)
            if self._body_bytes > max_body_bytes:
                raise _Refused(413, f"the body is longer than {max_body_bytes} bytes")
        self._requests[-1].body.append(body)

    def on_message_complete(self) -> None:
        self._requests[-1].is_complete = True

    def _head_limit(self) -> str:
        return f"{self._server.max_head_bytes} bytes"

    def _feed(self, data: bytes) -> None:
        """Parse ``data``: complete heads join the queue, bodies their request; a request that
        cannot be served becomes the failure that ends the connection, after those before it."""
        if self._failure is not None:
            return
        was_in_head = self._is_in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._failure = _Refused(None)  # what follows is not HTTP: close after the answer
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refused):
                raise
            self._failure = exc.__context__
        except httptools.HttpParserError as exc:
            self._failure = _Refused(400, f"malformed HTTP request: {exc}")
        else:
            if was_in_head and self._is_in_head:
                # A head still incomplete after more than one read: its partial header is
                # held by the parser, out of the callbacks' sight; bound it by what came.
                self._raw_head_bytes += len(data)
                if self._raw_head_bytes > self._server.max_head_bytes:
                    self._failure = _Refused(
                        431, f"the request's head is longer than {self._head_limit()}"
                    )

    # ---- the socket ---------------------------------------------------------------------

    async def _read(self) -> bytes:
        """The next bytes from the client; b"" once it has closed (or reset) its side."""
        sock = self._sock
        while True:
            try:
                return sock.recv(READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except (OSError, trio.ClosedResourceError):
                return b""

    async def _write(self, data: bytes) -> bool:
        """Send all of ``data``; whether it was. The connection closes if the client takes
        none of it for ``send_timeout_s``, or has gone."""
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._disconnected()
            return False
        if sent == len(data):
            return True
        self._is_writing = True
        try:
            remaining = memoryview(data)[sent:]
            with trio.move_on_after(self._server.send_timeout_s) as waiting:
                while remaining:
                    await trio.lowlevel.wait_writable(sock)
                    with contextlib.suppress(BlockingIOError):
                        remaining = remaining[sock.send(remaining) :]
        except (OSError, trio.ClosedResourceError):
            self._disconnected()
            return False
        finally:
            self._is_writing = False
        if waiting.cancelled_caught:
            self._stalled()
            return False
        return True

    def _stalled(self) -> None:
        log.info("a client read nothing for %g s: connection closed", self._server.send_timeout_s)
        self._disconnected()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _disconnected(self) -> None:
        self._is_disconnected = True
        self._must_close = True
        if self._watching is not None:
            self._watching.cancel()

    def _close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()


class ThreadWriter:
    """Writes the body of a chunked answer that has begun, from a worker thread, while the
    connection's task waits for that thread (``edge/stream_pump.py``: the router copies a
    child's stream to its client without a round of trio's loop an event).

    ``write`` is called from the thread alone, and ``settle`` after it, on the connection's
    task. The bounds are the connection's own: a client that takes nothing for
    ``send_timeout_s`` loses its connection.
    """

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._sock = connection._sock
        self._send_timeout_s = connection._server.send_timeout_s
        self._failure: Callable[[], None] | None = None

    def write(self, pieces: list[bytes], wait_writable: Callable[[int, float], bool]) -> bool:
        """Send ``pieces`` of the body, a chunk each, in one write if the client takes it;
        whether they were sent (False: the client has gone, or took nothing for
        ``send_timeout_s``; write nothing more). ``wait_writable(fd, timeout_s)`` blocks until
        ``fd`` takes bytes (False: ``timeout_s`` passed); it may raise to stop the write."""
        data = memoryview(
            b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces if piece)
        )
        deadline = time.monotonic() + self._send_timeout_s  # for the whole write, as _write's
        while data:
            try:
                data = data[self._sock.send(data) :]
            except BlockingIOError:
                left_s = deadline - time.monotonic()
                if left_s <= 0 or not wait_writable(self._sock.fileno(), left_s):
                    self._failure = self._connection._stalled
                    return False
            except OSError:
                self._failure = self._connection._disconnected
                return False
        return True

    def settle(self) -> None:
        """On the connection's task, once the thread is done: a client the thread found gone
        is gone for the connection too (ClientDisconnected)."""
        failure, self._failure = self._failure, None
        if failure is not None:
            failure()
            raise ClientDisconnected("the client has gone")


_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}


def _addresses(sock: socket.socket) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """The client's and the server's (host, port), as ASGI wants them; None for a Unix socket."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    try:
        return sock.getpeername()[:2], sock.getsockname()[:2]
    except OSError:
        return None, None  # reset already: the first read will say it has gone
