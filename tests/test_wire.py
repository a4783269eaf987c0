"""The router's HTTP/1.1 client for its children, against canned answers from a Trio server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from router.wire import ChildConnections, WireError

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b""
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


async def serve(nursery: trio.Nursery, handler: Handler) -> tuple[str, list[int]]:
    connections: list[int] = []

    async def counted(stream: trio.SocketStream) -> None:
        connections.append(1)
        await handler(stream)

    listeners = await nursery.start(partial(trio.serve_tcp, counted, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}", connections


async def body_of(connections: ChildConnections, target: str = "/") -> tuple[int, bytes]:
    response = await connections.request("POST", target, [("X-Test", "1")], b"{}")
    body = b"".join([piece async for piece in response.aiter_raw()])
    await response.aclose()
    return response.status_code, body


async def test_content_length_answers_reuse_the_connection(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    address, connections = await serve(nursery, handler)
    client = ChildConnections(address)
    assert await body_of(client) == (200, b"hello")
    assert await body_of(client) == (200, b"hello")
    assert len(connections) == 1
    await client.aclose()


async def test_chunked_answers_with_extensions_and_trailers(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await stream.send_all(b"5;ext=1\r\nhello\r\n")
            await stream.send_all(b"6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")

    address, connections = await serve(nursery, handler)
    client = ChildConnections(address)
    assert await body_of(client) == (200, b"hello world")
    assert await body_of(client) == (200, b"hello world")
    assert len(connections) == 1


async def test_a_connection_the_child_closed_is_replaced_once(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()  # keep-alive promised, then closed while idle

    address, connections = await serve(nursery, handler)
    client = ChildConnections(address)
    assert await body_of(client) == (404, b"")
    await trio.sleep(0.05)
    assert await body_of(client) == (404, b"")
    assert len(connections) == 2


async def test_close_delimited_body(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await stream.aclose()

    address, _ = await serve(nursery, handler)
    assert await body_of(ChildConnections(address)) == (200, b"all of it")


async def test_garbage_is_a_wire_error(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")

    address, _ = await serve(nursery, handler)
    with pytest.raises(WireError, match="status line"):
        await ChildConnections(address).request("GET", "/", [], b"")


async def test_a_connection_cut_mid_body_is_a_wire_error(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await stream.aclose()

    address, _ = await serve(nursery, handler)
    response = await ChildConnections(address).request("GET", "/", [], b"")
    with pytest.raises(WireError, match="middle of the answer"):
        async for _ in response.aiter_raw():
            pass


async def test_nothing_listening_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="cannot connect"):
        await ChildConnections("unix:/nonexistent/child.sock").request("GET", "/", [], b"")
