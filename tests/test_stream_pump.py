"""The stream pump (router/edge/stream_pump.py), in process over real loopback sockets: a
canned child answers chunked events, lean_http serves an app that hands the answer's body to the
pump, and a raw client reads what it writes.

The pump's thread waits in ``poll`` with real time, so these tests do too; every wait is bounded
by ``WAIT_S`` (a hang fails the test, nothing here times how fast anything was).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import math
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio

from router.edge import lean_http, stream_pump
from router.edge.usage import UsageCounter
from router.errors import ChildTimeout, WireError
from router.processes.wire import ChildConnections, WireResponse
from tests.processes import running_router
from tests.test_http_safety import dechunked
from tests.test_lean_http import Served, serving
from tests.test_wire import read_request, serve
from tests.tiny_models import write_tiny_llama

WAIT_S = 30
EVENTS = [b'data: {"choices":[{"text":"%d"}]}\n\n' % i for i in range(40)]

Message = dict[str, Any]
Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def child(nursery: trio.Nursery, handler: Handler) -> tuple[ChildConnections, list[int]]:
    """A canned child (``test_wire.serve``): ``handler`` answers each connection's requests."""
    address, connections = await serve(nursery, handler)
    return ChildConnections(address), connections


def streaming(events: list[bytes], *, then: Callable[[], Awaitable[None]] | None = None) -> Handler:
    """Answer every request with ``events``, a chunk each sent apart; after them ``then`` (if
    any) instead of the last chunk."""

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the router may close it
            await answer_each(stream)

    async def answer_each(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for event in events:
                await stream.send_all(b"%x\r\n%b\r\n" % (len(event), event))
                await trio.sleep(0.001)
            if then is not None:
                await then()
                return
            await stream.send_all(b"0\r\n\r\n")

    return handler


class PumpingApp:
    """An ASGI app that forwards each request to ``connections`` and hands the answer's body
    to the pump; what the pump raised, and whether a thread copied it, are kept."""

    def __init__(self, connections: ChildConnections, timeout_s: float = WAIT_S) -> None:
        self.connections = connections
        self.timeout_s = timeout_s
        self.raised: list[BaseException] = []
        self.counter = UsageCounter()
        self.pumped_by: list[str] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        response = await self.connections.request(
            "POST", "/v1/completions", [], b"{}", timeout_s=self.timeout_s
        )
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            writer = scope["extensions"][lean_http.THREAD_WRITER]()
            assert writer is not None and response.can_be_read_from_a_thread
            self.counter.begin(response.content_type)
            original_write = writer.write

            def noting_write(pieces: list[bytes], wait: Callable[[int, float], bool]) -> bool:
                self.pumped_by.append(threading.current_thread().name)
                return original_write(pieces, wait)

            writer.write = noting_write  # type: ignore[method-assign]
            try:
                await stream_pump.pump(response, writer, self.counter)
            except BaseException as exc:
                self.raised.append(exc)
                raise
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


def request(port: int) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n\r\n" % port


async def read_answer(sock: trio.socket.SocketType) -> bytes:
    """Up to the end of one chunked answer (its last chunk)."""
    data = b""
    with trio.fail_after(WAIT_S):
        while not data.endswith(b"0\r\n\r\n"):
            chunk = await sock.recv(65536)
            assert chunk, f"the connection closed after {data[-200:]!r}"
            data += chunk
    return data


async def connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    return sock


async def ask_until_cut(served: Served) -> None:
    """One request on a new connection, read until the server closes it (a cut answer)."""
    sock = await connect(served.port)
    with sock:
        await sock.send(request(served.port))
        with trio.fail_after(WAIT_S):
            while await sock.recv(65536):
                pass


async def test_a_pumped_stream_arrives_whole_and_both_connections_are_kept(
    nursery: trio.Nursery,
) -> None:
    connections, opened = await child(nursery, streaming(EVENTS))
    app = PumpingApp(connections)
    async with serving(app) as served:
        sock = await connect(served.port)
        with sock:
            for _ in range(2):  # the same client connection, the same child connection
                await sock.send(request(served.port))
                answer = await read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
                assert dechunked(answer) == b"".join(EVENTS)
        served.stop.set()
    assert app.raised == []
    assert len(opened) == 1  # the child's connection went back to the pool after each answer
    assert app.pumped_by and all(name != "MainThread" for name in app.pumped_by)
    usage = app.counter.usage()
    assert usage is not None and usage.completion_tokens == len(EVENTS)  # the last answer's
    assert stream_pump._running == 0
    await connections.aclose()


async def test_a_child_that_dies_mid_stream_is_a_wire_error(nursery: trio.Nursery) -> None:
    async def die() -> None:
        pass  # the handler returns: trio closes the connection without the last chunk

    connections, _ = await child(nursery, streaming(EVENTS[:3], then=die))
    app = PumpingApp(connections)
    async with serving(app) as served:
        await ask_until_cut(served)
        served.stop.set()
    assert [type(exc) for exc in app.raised] == [WireError]
    await connections.aclose()


async def test_a_child_silent_mid_stream_times_out(nursery: trio.Nursery) -> None:
    connections, _ = await child(nursery, streaming(EVENTS[:3], then=trio.sleep_forever))
    app = PumpingApp(connections, timeout_s=0.3)
    async with serving(app) as served:
        await ask_until_cut(served)
        served.stop.set()
    assert [type(exc) for exc in app.raised] == [ChildTimeout]
    await connections.aclose()


async def test_cancelling_the_task_wakes_the_thread_at_once(nursery: trio.Nursery) -> None:
    # The child goes silent after three events (and its timeout is long): only the wake-up pipe
    # can end the thread's wait, when the request's task is cancelled.
    connections, _ = await child(nursery, streaming(EVENTS[:3], then=trio.sleep_forever))
    app = PumpingApp(connections, timeout_s=WAIT_S * 10)
    async with serving(app) as served:
        sock = await connect(served.port)
        with sock:
            await sock.send(request(served.port))
            data = b""
            with trio.fail_after(WAIT_S):
                while data.count(b"data: ") < 3:
                    data += await sock.recv(65536)
            assert stream_pump._running == 1
            served.stop.set()  # shutdown cancels what is still being served, after its grace
            with trio.fail_after(WAIT_S):
                while await sock.recv(65536):
                    pass
    assert [type(exc) for exc in app.raised] == [trio.Cancelled]
    assert stream_pump._running == 0
    await connections.aclose()


async def test_a_client_that_stops_reading_loses_its_connection(nursery: trio.Nursery) -> None:
    big = [b"data: " + b"x" * 60_000 + b"\n\n"] * 200  # far more than the socket buffers hold
    connections, _ = await child(nursery, streaming(big))
    app = PumpingApp(connections)
    async with serving(app, send_timeout_s=0.5) as served:
        sock = socket.create_connection(("127.0.0.1", served.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.sendall(request(served.port))
            with trio.fail_after(WAIT_S):
                while not app.raised:
                    await trio.sleep(0.05)
        served.stop.set()
    assert [type(exc) for exc in app.raised] == [lean_http.ClientDisconnected]
    await connections.aclose()


def test_streams_past_max_pumps_are_copied_on_trios_loop_and_all_arrive_whole(
    tmp_path: Path,
) -> None:
    # Through a real router and child: more streams at once than there are pumps (the others
    # are copied on trio's loop), each arriving whole: every event, the usage, the end.
    write_tiny_llama(tmp_path / "a.gguf", context_length=16384)
    # More than the socket buffers between a held client and the router hold: no stream is
    # over at the router while its client waits at the barrier.
    tokens = 2500
    body = {"model": "a", "prompt": "once", "max_tokens": tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip

    count = stream_pump.MAX_PUMPS + 2
    all_begun = threading.Barrier(count, timeout=WAIT_S)  # so that they run at once

    def stream_end(base_url: str) -> tuple[int, str | None, str]:
        """(completion tokens, last finish reason, last line) of one stream."""
        usage, finish, last = 0, None, ""
        with (
            httpx.Client(timeout=WAIT_S) as client,
            client.stream("POST", f"{base_url}/v1/completions", json=body) as answer,
        ):
            answer.raise_for_status()
            for line in answer.iter_lines():
                if not last:
                    all_begun.wait()
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        usage = event["usage"]["completion_tokens"]
                    for choice in event["choices"]:
                        finish = choice.get("finish_reason") or finish
                if line:
                    last = line
        return usage, finish, last

    with (
        running_router(tmp_path, "-c", "16384", "-np", str(count)) as router,
        concurrent.futures.ThreadPoolExecutor(count) as pool,
    ):
        ends = list(pool.map(lambda _: stream_end(router.base_url), range(count)))
    assert ends == [(tokens, "length", "data: [DONE]")] * count


@pytest.mark.parametrize("timeout_s", [0.05, 10**7, math.inf])
def test_a_pumps_wait_takes_any_timeout_and_its_wake_up(timeout_s: float) -> None:
    # poll(2) takes at most 2**31 - 1 ms; --timeout may be 10**7 s, or none.
    wake = stream_pump._Wake()
    left, right = socket.socketpair()
    try:
        if timeout_s < 1:
            assert wake.wait_readable(left.fileno(), timeout_s) is False
        right.send(b"x")
        assert wake.wait_readable(left.fileno(), timeout_s) is True
        left.recv(1)
        wake.ring()
        with pytest.raises(stream_pump._Woken):
            wake.wait_readable(left.fileno(), timeout_s)
    finally:
        left.close()
        right.close()
        wake.close()


async def test_no_room_or_no_pipe_leaves_the_stream_to_trios_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pump() says False before it reads anything; the caller copies the stream itself.
    response, writer = cast(WireResponse, None), cast(lean_http.ThreadWriter, None)
    monkeypatch.setattr(stream_pump, "_running", stream_pump.MAX_PUMPS)
    assert await stream_pump.pump(response, writer, None) is False
    monkeypatch.setattr(stream_pump, "_running", 0)

    def no_pipe() -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(stream_pump.os, "pipe", no_pipe)
    assert await stream_pump.pump(response, writer, None) is False
    assert stream_pump._running == 0  # nothing held for ever
