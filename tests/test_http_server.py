"""Serving the app: the connection limit (in-memory connections), and the keep-alive timer that
Quart-Trio's cancellation used to stop, on both servers (see test_http_safety.py for the rest,
end to end, and test_lean_http.py for the lean server's own)."""

from __future__ import annotations

import math
import socket
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config

from router.edge import http_server, lean_http
from router.edge.http_server import LimitedListener
from router.edge.web import new_app


class QueueListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands out the streams put in ``arrivals``, as a socket hands out connections."""

    def __init__(self) -> None:
        self.arrivals, self._waiting = trio.open_memory_channel[trio.abc.Stream](math.inf)

    async def accept(self) -> trio.abc.Stream:
        return await self._waiting.receive()

    async def aclose(self) -> None:
        await self._waiting.aclose()


async def test_connections_past_the_limit_wait_until_one_is_done(nursery: trio.Nursery) -> None:
    queue = QueueListener()
    listener = LimitedListener(queue, 2)  # type: ignore[arg-type]
    served: list[trio.abc.Stream] = []
    done: dict[trio.abc.Stream, trio.Event] = {}

    async def handler(stream: trio.abc.Stream) -> None:
        served.append(stream)
        done[stream] = trio.Event()
        await done[stream].wait()

    nursery.start_soon(partial(trio.serve_listeners, listener.serving(handler), [listener]))
    clients = [trio.testing.memory_stream_pair()[1] for _ in range(3)]
    for stream in clients:
        queue.arrivals.send_nowait(stream)
    await trio.testing.wait_all_tasks_blocked()
    assert served == clients[:2]  # the third waits, unaccepted
    done[clients[0]].set()
    await trio.testing.wait_all_tasks_blocked()
    assert served == clients  # a slot came free: it is served now


async def test_a_cancelled_accept_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = QueueListener()
    listener = LimitedListener(queue, 1)  # type: ignore[arg-type]
    with trio.move_on_after(0.01):  # nothing arrives; the accept is cancelled
        await listener.accept()
    queue.arrivals.send_nowait(trio.testing.memory_stream_pair()[0])
    with trio.fail_after(5):
        await listener.accept()


@pytest.mark.parametrize("serve", [http_server.serve, lean_http.serve], ids=["hypercorn", "lean"])
async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, serve: Any
) -> None:
    app = new_app("test")

    @app.get("/hello")
    async def hello() -> str:
        return "hello"

    config = Config()
    config.keep_alive_timeout = 5
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    stop = trio.Event()
    await nursery.start(
        partial(
            serve,
            app,
            config,
            sock,
            max_connections=8,
            send_timeout_s=60,
            shutdown_trigger=stop.wait,
        )
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = b""
    with trio.fail_after(60):  # virtual seconds: the server must close it after 5
        while data := await stream.receive_some():
            received += data
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"hello")
    stop.set()
