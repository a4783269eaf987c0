"""Serve an ASGI app with Hypercorn on one listening socket: Hypercorn's trio ``worker_serve``
for a plain socket, with a cap on open connections, and connections that close when they must.

- At most ``max_connections`` client connections are served at once; more wait, unaccepted, in
  the socket's backlog until one closes, so idle connections cannot take every file descriptor.
  (``worker_serve`` builds its listeners itself and has no place for a limit.)
- A connection its client closed while idle is closed at once. Hypercorn kept it (and its
  file descriptor, and now its slot) until the keep-alive timer ran out, 75 s later.
- Quart-Trio cancels a request's tasks as soon as Hypercorn tells it the exchange is over, and
  Hypercorn tells it from inside the send of the answer's last piece, before it has closed or
  recycled the connection: that cancellation broke off the rest. A connection that had to close
  (the client's ``Connection: close``, a body left unread after an early 413 or 401) stayed open
  with nothing reading it, so the client's next request got no answer at all; a kept-alive one
  never started its idle timer. ``finish_answers`` shields that last send.
- An answer whose body raises ``web.CutConnection`` ends by closing the connection, without the
  last chunk, so the client knows it is incomplete.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    ConnectionState,
    LifespanState,
    Scope,
    TaskGroup,
)
from hypercorn.utils import wrap_app

from router.errors import CutConnection

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve(
    app: ASGIFramework,
    config: Config,
    sock: socket.socket,
    *,
    max_connections: int,
    send_timeout_s: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sock`` until ``shutdown_trigger`` returns.

    ``task_status.started()`` once the app has started (ASGI lifespan) and connections are
    accepted. After the trigger, no connection is accepted and running requests have
    ``config.graceful_timeout`` seconds to finish; then every connection still open is closed
    (even one whose client stopped reading: Hypercorn sends under a shield) and the app's
    lifespan ends. A client that takes nothing for ``send_timeout_s`` loses its connection.
    Cancellation: as after the trigger.
    """
    wrapped = wrap_app(finish_answers(app), config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    listener = LimitedListener(
        trio.SocketListener(trio.socket.from_stdlib_socket(sock)), max_connections
    )
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        state = ConnectionState(lifespan_state.copy())

        open_clients = _OpenClients()

        async def connection(stream: trio.SocketStream) -> None:
            client = _ClientStream(stream, send_timeout_s)
            server = TCPServer(wrapped, config, context, state, client)  # type: ignore[arg-type]
            server.idle_task = idle_timer = _IdleTimer()
            client.on_end = idle_timer.end  # nothing more can come: stop waiting for it
            open_clients.add(client)
            try:
                await server
            finally:
                open_clients.discard(client)

        async def close_stragglers(deadline: float) -> None:
            """At the graceful deadline, close what is still open: a send blocked under
            Hypercorn's shield wakes only when its socket closes."""
            with trio.CancelScope(shield=True):
                with trio.move_on_at(deadline):
                    await open_clients.wait_until_none()
                await open_clients.close_all()

        async with trio.open_nursery() as connections:
            task_status.started()
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners,
                            listener.serving(connection),
                            [listener],
                            handler_nursery=connections,
                        )
                    )
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()  # idle connections close; busy ones finish
                deadline = trio.current_time() + config.graceful_timeout
                connections.cancel_scope.deadline = deadline
                connections.start_soon(close_stragglers, deadline)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class _OpenClients:
    """The connections being served, so that shutdown can wait for them, then close them."""

    def __init__(self) -> None:
        self._clients: set[_ClientStream] = set()
        self._none_left = trio.Event()

    def add(self, client: _ClientStream) -> None:
        self._clients.add(client)

    def discard(self, client: _ClientStream) -> None:
        self._clients.discard(client)
        if not self._clients:
            self._none_left.set()
            self._none_left = trio.Event()

    async def wait_until_none(self) -> None:
        if self._clients:
            await self._none_left.wait()

    async def close_all(self) -> None:
        for client in list(self._clients):
            await client.aclose()


class _IdleTimer(TrioSingleTask):
    """Hypercorn's keep-alive timer for one connection, which stays off once the client has
    closed its side: an answer finished after that (its last send is shielded) would restart
    it, and the connection would sit in CLOSE-WAIT, holding its slot, for the whole keep-alive
    timeout."""

    def __init__(self) -> None:
        super().__init__()
        self._has_ended = False

    async def restart(self, task_group: TaskGroup, action: Callable[..., Any]) -> None:
        if self._has_ended:
            await self.stop()
        else:
            await super().restart(task_group, action)

    async def end(self) -> None:
        self._has_ended = True
        await self.stop()


class _ClientStream(trio.abc.HalfCloseableStream):
    """A client's connection that calls ``on_end`` when the client has closed its side, and
    whose ``send_eof`` never collides with an answer being sent.

    Hypercorn may close a connection from its reading task while the app's task sends (a
    request pipelined behind one answered with ``Connection: close``): trio's ``send_eof`` then
    made that send fail with BusyResourceError, a traceback in the log for each such request.
    """

    def __init__(self, stream: trio.SocketStream, send_timeout_s: float) -> None:
        self._stream = stream
        self._send_timeout_s = send_timeout_s
        self.socket = stream.socket  # Hypercorn reads the addresses from it
        self.on_end: Callable[[], Awaitable[None]] | None = None
        self._is_sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._end()  # reset by the client: gone all the same
            raise
        if not data:
            await self._end()
        return data

    async def _end(self) -> None:
        if self.on_end is not None:
            await self.on_end()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._is_sending = True
        try:
            # A deadline of its own: it fires even inside the shield Hypercorn sends under.
            with trio.move_on_after(self._send_timeout_s) as waiting:
                await self._stream.send_all(data)
        finally:
            self._is_sending = False
        if waiting.cancelled_caught:
            await self._stream.aclose()
            raise trio.BrokenResourceError(
                f"the client read nothing for {self._send_timeout_s:g} s: connection closed"
            )

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._is_sending:
            return  # the close that follows ends that send
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        await self._stream.aclose()


class LimitedListener(trio.abc.Listener[trio.SocketStream]):
    """Accepts a connection only while fewer than ``limit`` of its connections are served."""

    def __init__(self, listener: trio.abc.Listener[trio.SocketStream], limit: int) -> None:
        self._listener = listener
        self._slots = trio.Semaphore(limit)

    async def accept(self) -> trio.SocketStream:
        """The next connection, once a slot is free: serve it with a ``serving`` handler.

        Cancellation: the slot is given back.
        """
        await self._slots.acquire()
        try:
            return await self._listener.accept()
        except BaseException:
            self._slots.release()
            raise

    def serving(self, handler: Handler) -> Handler:
        """``handler`` for a connection from ``accept``, freeing its slot when it returns."""

        async def serve_then_free(stream: trio.SocketStream) -> None:
            try:
                await handler(stream)
            finally:
                self._slots.release()

        return serve_then_free

    async def aclose(self) -> None:
        await self._listener.aclose()


def finish_answers(app: ASGIFramework) -> ASGIFramework:
    """``app``, with the last send of each HTTP answer shielded from cancellation (see the
    module's docstring), and ``CutConnection`` ending an answer without a traceback."""

    async def finishing(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_shielding_the_end(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        try:
            await app(scope, receive, send_shielding_the_end)
        except* CutConnection:
            pass  # the reason was logged where it arose; Hypercorn now closes the connection

    return finishing
