"""The router's HTTP/1.1 client for its children, against canned answers from a Trio server.

Timeouts run on trio's MockClock (``autojump_clock``): instant, and exact."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from router.errors import ChildTimeout, WireError
from router.processes import wire
from router.processes.wire import ChildConnections

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


async def test_interim_answers_are_skipped_never_taken_for_the_answer(
    nursery: trio.Nursery,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        count = 0
        while await read_request(stream):
            count += 1
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n")
            body = b"answer %d" % count
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            await stream.send_all(body)

    address, connections = await serve(nursery, handler)
    client = ChildConnections(address)
    assert await body_of(client) == (200, b"answer 1")
    assert await body_of(client) == (200, b"answer 2")  # its own, on the same connection
    assert len(connections) == 1


async def test_switching_protocols_is_a_wire_error(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")

    address, _ = await serve(nursery, handler)
    with pytest.raises(WireError, match="switched protocols"):
        await ChildConnections(address).request("GET", "/", [], b"")


async def test_a_connection_whose_answer_was_not_read_whole_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        count = 0
        with contextlib.suppress(trio.BrokenResourceError):  # the client leaves mid-answer
            while await read_request(stream):
                count += 1
                body = b"answer %d " % count + b"x" * 100_000
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                await stream.send_all(head + body)

    address, connections = await serve(nursery, handler)
    client = ChildConnections(address)
    first = await client.request("POST", "/", [], b"{}")
    await first.aclose()  # head only: the rest of its answer is still on that connection
    _, body = await body_of(client)
    assert body.startswith(b"answer 1 ")  # a new connection's first answer, not the old rest
    assert len(connections) == 2


async def test_a_large_body_arrives_whole_and_is_not_copied(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
        digest = hashlib.sha256(body).hexdigest().encode()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + digest)

    address, _ = await serve(nursery, handler)
    payload = bytearray(random.randbytes(5 * 1024 * 1024))
    response = await ChildConnections(address).request("POST", "/", [], payload)
    digest = b"".join([piece async for piece in response.aiter_raw()])
    assert digest == hashlib.sha256(payload).hexdigest().encode()


async def test_an_answer_before_the_body_was_taken_stops_the_sending(
    nursery: trio.Nursery,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
        await trio.sleep_forever()  # reads no more, and keeps the connection open

    address, _ = await serve(nursery, handler)
    client = ChildConnections(address)
    response = await client.request("POST", "/", [], b"x" * (32 * 1024 * 1024))
    assert response.status_code == 404
    assert b"".join([piece async for piece in response.aiter_raw()]) == b"nope"
    assert not response.is_reusable  # the rest of the body would be read as a new request
    await response.aclose()


async def test_a_silent_child_times_out_before_its_head(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await trio.sleep_forever()

    address, _ = await serve(nursery, handler)
    with pytest.raises(ChildTimeout, match="sent nothing for 30 s"):
        await ChildConnections(address).request("GET", "/", [], b"", timeout_s=30)


async def test_a_child_that_stops_taking_the_body_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # reads nothing at all

    address, _ = await serve(nursery, handler)
    with pytest.raises(ChildTimeout, match="took no more of the request"):
        await ChildConnections(address).request("POST", "/", [], b"x" * 50_000_000, timeout_s=30)


async def test_a_child_silent_in_the_middle_of_its_answer_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await trio.sleep_forever()

    address, _ = await serve(nursery, handler)
    response = await ChildConnections(address).request("GET", "/", [], b"", timeout_s=30)
    pieces = []
    with pytest.raises(ChildTimeout, match="sent nothing for 30 s"):
        async for piece in response.aiter_raw():
            pieces.append(piece)
    assert pieces == [b"abc"]


async def test_a_large_chunk_is_passed_on_as_it_arrives(nursery: trio.Nursery) -> None:
    size = 3 * 1024 * 1024
    sent = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await stream.send_all(b"%x\r\n" % size + b"a" * (size // 2))
        await sent.wait()
        await stream.send_all(b"a" * (size - size // 2) + b"\r\n0\r\n\r\n")

    address, _ = await serve(nursery, handler)
    response = await ChildConnections(address).request("GET", "/", [], b"")
    received = 0
    async for piece in response.aiter_raw():
        received += len(piece)
        if received >= size // 2:
            sent.set()  # half the chunk came through before the rest was even sent
    assert received == size


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
async def test_a_malformed_head_is_a_wire_error(nursery: trio.Nursery, answer: bytes) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(answer)

    address, _ = await serve(nursery, handler)
    with pytest.raises(WireError):
        await ChildConnections(address).request("GET", "/", [], b"")


@pytest.mark.parametrize("size_line", [b"zz", b"", b"1_0", b"f" * 40])
async def test_a_bad_chunk_size_is_a_wire_error(nursery: trio.Nursery, size_line: bytes) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await stream.send_all(size_line + b"\r\nabc\r\n0\r\n\r\n")

    address, _ = await serve(nursery, handler)
    response = await ChildConnections(address).request("GET", "/", [], b"")
    with pytest.raises(WireError, match="chunk size"):
        async for _ in response.aiter_raw():
            pass


async def test_requests_beyond_the_in_use_cap_wait_for_a_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child accepts a bounded number of connections: the router never opens more than
    MAX_IN_USE for requests (its health checks keep room), and keeps MAX_IDLE at most."""
    monkeypatch.setattr("router.processes.wire.MAX_IN_USE", 2)
    monkeypatch.setattr("router.processes.wire.MAX_IDLE", 1)

    async def handler(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    address, connections = await serve(nursery, handler)
    pool = ChildConnections(address)
    held = [await pool.request("GET", "/", [], b"", timeout_s=5) for _ in range(2)]
    with pytest.raises(ChildTimeout, match="stayed busy"):
        await pool.request("GET", "/", [], b"", timeout_s=5)
    for response in held:  # read whole and given back: one stays idle, one is closed
        assert b"".join([piece async for piece in response.aiter_raw()]) == b"ok"
        await response.aclose()
    assert len(pool._idle) == 1
    assert await body_of(pool) == (200, b"ok")
    assert len(connections) == 2
    await pool.aclose()


async def test_reading_bytes_already_there_lets_other_tasks_run(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child that sends faster than the router forwards leaves bytes waiting at every read;
    # each such read still yields to trio's loop, so the router's other tasks are not starved.
    monkeypatch.setattr(wire, "RECEIVE_BYTES", 1000)  # 40 reads of an answer the buffer holds
    chunk, chunks = b"x" * 990, 40

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"3de\r\n" + chunk + b"\r\n" for _ in range(chunks)) + b"0\r\n\r\n"
        await stream.send_all(head + body)
        await trio.sleep_forever()

    address, _ = await serve(nursery, handler)
    client = ChildConnections(address)
    response = await client.request("GET", "/", [], b"")
    await trio.sleep(0.3)  # the whole answer waits in the socket's buffer
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as counting:
        counting.start_soon(count_turns)
        body = b"".join([piece async for piece in response.aiter_raw()])
        counting.cancel_scope.cancel()
    assert body == chunk * chunks
    assert turns >= chunks // 2  # about one a read; one or two if reads never yielded
    await response.aclose()
    await client.aclose()


def chunked_answer() -> wire.WireResponse:
    """An answer whose chunked body is fed by the test (its stream is never read)."""
    headers = [("Transfer-Encoding", "chunked")]
    stream = cast(trio.abc.Stream, None)
    return wire.WireResponse(
        ChildConnections("unix:/nowhere"), stream, 200, headers, b"", "POST", 1
    )


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    extension=st.booleans(),
    trailer=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_the_chunked_framing_is_undone_wherever_the_reads_cut_it(
    chunks: list[bytes], extension: bool, trailer: bool, cuts: list[int]
) -> None:
    # The one reader of the framing, for trio's reads and the pump's alike: the bytes may
    # arrive cut anywhere (a CRLF in two reads, a size line across reads, trailers later).
    ext = b";name=value" if extension else b""
    body = b"".join(b"%x%b\r\n%b\r\n" % (len(chunk), ext, chunk) for chunk in chunks)
    body += b"0\r\n" + (b"X-Trailer: yes\r\n" if trailer else b"") + b"\r\n"
    after = b"HTTP/1.1 200 OK\r\n"  # the next answer's first bytes: never taken for this one
    data = body + after
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    answer = chunked_answer()
    pieces: list[bytes] = []
    for start, end in itertools.pairwise(points):
        answer._buffer += data[start:end]
        pieces += answer._take_chunked()
    assert b"".join(pieces) == b"".join(chunks)
    assert answer._is_done
    assert answer._buffer == after


def test_bad_framing_ends_the_answer_after_the_pieces_before_it() -> None:
    answer = chunked_answer()
    answer._buffer = b"5\r\nhello\r\n3\r\nabcXY\r\n"  # the second chunk is longer than it says
    assert answer._take_chunked() == [b"hello", b"abc"]
    with pytest.raises(WireError, match="longer than its size line"):
        answer._take_chunked()
    answer = chunked_answer()
    answer._buffer = b"zz\r\n"
    with pytest.raises(WireError, match="bad chunk size line"):
        answer._take_chunked()


def test_the_chunked_framing_is_undone_byte_by_byte_and_cut_anywhere() -> None:
    data = b"5;x=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: yes\r\n\r\n"
    ways = [[data[:cut], data[cut:]] for cut in range(len(data) + 1)]
    ways += [[data[i : i + size] for i in range(0, len(data), size)] for size in (1, 2, 3)]
    for reads in ways:
        answer = chunked_answer()
        pieces: list[bytes] = []
        for read in reads:
            answer._buffer += read
            pieces += answer._take_chunked()
        assert (b"".join(pieces), answer._is_done, answer._buffer) == (b"hello world!", True, b"")
