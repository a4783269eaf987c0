"""The lean HTTP/1.1 server (``router/edge/lean_http.py``), in process, over real loopback
sockets: what an ASGI app gets, what a careless or hostile client cannot do, shutdown, and the
child's own Quart app on a real tiny model.

Time-dependent limits (keep-alive, slow heads, a client that stops reading) run on trio's
MockClock; the sockets are real.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httptools
import openai
import pytest
import trio
import trio.testing
from hypercorn.config import Config

from router.edge import lean_http
from router.edge.asgi_lifespan import LifespanFailed
from router.edge.web import new_app, request_body
from router.errors import CutConnection

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WAIT_S = 30  # the bound of every wait in these tests (virtual seconds under MockClock)


# ---- a server to test, and a client that reads exactly what it sends -----------------------------


@dataclass
class Served:
    port: int
    stop: trio.Event
    lifespan: list[str]


@asynccontextmanager
async def serving(
    app: Callable[[Message, Receive, Send], Awaitable[None]],
    *,
    config: Config | None = None,
    max_connections: int = 8,
    send_timeout_s: float = 60,
    max_body_bytes: int | None = None,
) -> AsyncIterator[Served]:
    """``app`` served by lean_http on a loopback port until the block ends (then shut down
    gracefully, and waited for)."""
    config = config or Config()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    served = Served(sock.getsockname()[1], trio.Event(), [])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    lean_http.serve,
                    app,
                    config,
                    sock,
                    max_connections=max_connections,
                    send_timeout_s=send_timeout_s,
                    shutdown_trigger=served.stop.wait,
                    max_body_bytes=max_body_bytes,
                )
            )
            try:
                yield served
            finally:
                served.stop.set()
    finally:
        sock.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A raw connection that parses answers as they come (httptools' response parser)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.answers: list[Answer] = []
        self.is_closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, method: str, path: str, *headers: str, body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def answer(self) -> Answer:
        """The next whole answer (interim 1xx answers included, as answers of their own)."""
        with trio.fail_after(WAIT_S):
            while not self.answers:
                if self.is_closed:
                    raise ConnectionError("closed without a whole answer")
                await self._receive()
        return self.answers.pop(0)

    async def wait_closed(self) -> bytes:
        """What else the server sends, until it closes the connection (it must, in time)."""
        rest = b""
        with trio.fail_after(WAIT_S):
            while not self.is_closed:
                rest += await self._receive()
        return rest

    async def _receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset: closed with our bytes unread
            data = b""
        if not data:
            self.is_closed = True
            return data
        self._parser.feed_data(data)
        return data

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self._headers, self._body = {}, []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.answers.append(
            Answer(self._parser.get_status_code(), self._headers, b"".join(self._body), self._body)
        )


# ---- apps ----------------------------------------------------------------------------------------


async def lifespan(scope: Message, receive: Receive, send: Send, log: list[str]) -> None:
    while True:
        message = await receive()
        log.append(message["type"])
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def answer_json(send: Send, payload: Any, status: int = 200) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def echo(scope: Message, receive: Receive, send: Send) -> None:
    """Answers with what it was asked: method, path, query, headers, body."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send, [])
        return
    body = await read_body(receive)
    await answer_json(
        send,
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
            "body": body.decode(),
            "http_version": scope["http_version"],
            "client": scope["client"][0],
        },
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- what an app gets ----------------------------------------------------------------------------


async def test_requests_on_one_kept_alive_connection_reach_the_app_whole() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        for n in range(3):
            await client.request("POST", f"/v1/x%20y?n={n}", "X-Thing: a b ", body=b"hello")
            answer = await client.answer()
            assert answer.status == 200
            seen = answer.json()
            assert seen["method"] == "POST"
            assert (seen["path"], seen["raw_path"], seen["query"]) == (
                "/v1/x y",
                "/v1/x%20y",
                f"n={n}",
            )
            assert ["x-thing", "a b"] in seen["headers"]  # lowercased names, values trimmed
            assert seen["body"] == "hello"
            assert seen["client"] == "127.0.0.1"
            assert answer.headers["content-length"] == str(len(answer.body))
            assert "connection" not in answer.headers
        assert not client.is_closed


async def test_pipelined_requests_are_answered_one_by_one_in_order() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        await client.send(
            b"GET /1 HTTP/1.1\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /4 HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        seen = [(await client.answer()).json() for _ in range(4)]
        assert [(s["path"], s["body"]) for s in seen] == [
            ("/1", ""),
            ("/2", "abc"),
            ("/3", "de"),
            ("/4", ""),
        ]
        await client.wait_closed()


async def test_a_chunked_body_sent_in_pieces_arrives_as_it_comes() -> None:
    pieces: list[bytes] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        while True:
            message = await receive()
            pieces.append(message["body"])
            if not message["more_body"]:
                break
        await answer_json(send, {"pieces": len(pieces)})

    async with serving(app) as served:
        client = await Client.connect(served.port)
        await client.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await trio.testing.wait_all_tasks_blocked()
        await client.send(b"3\r\ndef\r\n0\r\nX-Trailer: ignored\r\n\r\n")
        assert (await client.answer()).status == 200
        assert b"".join(pieces) == b"abcdef"
        assert len(pieces) >= 2


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        await client.send(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert (await client.answer()).status == 100
        await client.send(b"hello")
        answer = await client.answer()
        assert answer.status == 200 and answer.json()["body"] == "hello"
        await client.request("GET", "/b")  # the connection goes on
        assert (await client.answer()).json()["path"] == "/b"


async def test_an_answer_given_without_reading_the_body_closes_the_connection() -> None:
    async def refuse(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        await answer_json(send, {"error": "no"}, 401)

    async with serving(refuse) as served:
        client = await Client.connect(served.port)
        await client.send(b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        answer = await client.answer()
        assert answer.status == 401
        assert answer.headers["connection"] == "close"  # what follows is not a request
        await client.wait_closed()


async def test_head_gets_the_headers_of_get_without_a_body() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        await client.send(b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
        raw = b""
        with trio.fail_after(WAIT_S):
            while raw.count(b"HTTP/1.1 200") < 2 or not raw.endswith(b"}"):
                raw += await client.stream.receive_some(65536)
        head_answer, get_answer = raw.split(b"HTTP/1.1 200")[1:]
        assert head_answer.endswith(b"\r\n\r\n")  # no body
        assert b"content-length: " in head_answer
        assert b'"path": "/y"' in get_answer


async def test_a_stream_is_chunked_and_each_piece_leaves_at_once() -> None:
    may_go_on = trio.Event()

    async def stream(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await may_go_on.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with serving(stream) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/events")
        received = b""
        with trio.fail_after(WAIT_S):
            while b"data: 1\n\n" not in received:  # before the app sends the second
                received += await client.stream.receive_some(65536)
        assert b"transfer-encoding: chunked" in received
        client._parser.feed_data(received)
        may_go_on.set()
        answer = await client.answer()
        assert answer.body == b"data: 1\n\ndata: 2\n\n"
        assert not client.is_closed  # a whole answer: the connection may go on


async def test_a_client_that_leaves_mid_stream_is_a_disconnect_for_the_app() -> None:
    heard = trio.Event()

    async def endless(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        await receive()  # the (empty) body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"
        heard.set()

    async with serving(endless) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        await client.stream.receive_some(65536)
        await client.stream.aclose()
        with trio.fail_after(WAIT_S):
            await heard.wait()


async def test_http_1_0_gets_a_closed_connection_unless_it_asks_to_keep_it() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        await client.send(b"GET /a HTTP/1.0\r\n\r\n")
        assert (await client.answer()).status == 200
        await client.wait_closed()
        client = await Client.connect(served.port)
        await client.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await client.answer()
        assert answer.headers["connection"] == "keep-alive"
        await client.send(b"GET /b HTTP/1.0\r\n\r\n")
        assert (await client.answer()).json()["path"] == "/b"


async def test_lifespan_runs_around_serving() -> None:
    events: list[str] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, events)
            return
        events.append("request")
        await answer_json(send, {})

    async with serving(app) as served:
        assert events == ["lifespan.startup"]
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        await client.answer()
    assert events == ["lifespan.startup", "request", "lifespan.shutdown"]


async def test_an_app_that_fails_to_start_is_not_served() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no model"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    with sock, pytest.raises(LifespanFailed, match="no model"):
        await lean_http.serve(
            app,
            Config(),
            sock,
            max_connections=1,
            send_timeout_s=1,
            shutdown_trigger=trio.sleep_forever,
        )


async def test_an_app_without_lifespan_is_served_all_the_same() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("only http")
        await answer_json(send, {"ok": True})

    async with serving(app) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        assert (await client.answer()).json() == {"ok": True}


async def test_a_unix_socket_is_served_with_no_addresses(tmp_path: Path) -> None:
    async def where(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        await answer_json(send, {"client": scope["client"], "server": scope["server"]})

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "s"))
    sock.listen(4)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                lean_http.serve,
                where,
                Config(),
                sock,
                max_connections=4,
                send_timeout_s=10,
                shutdown_trigger=stop.wait,
            )
        )
        client = Client(await trio.open_unix_socket(str(tmp_path / "s")))
        await client.request("GET", "/")
        assert (await client.answer()).json() == {"client": None, "server": None}
        stop.set()
    sock.close()


# ---- apps that fail ------------------------------------------------------------------------------


async def test_an_app_that_raises_before_answering_makes_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        raise RuntimeError("bug")

    async with serving(app) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        answer = await client.answer()
        assert answer.status == 500
        assert answer.json()["error"]["type"] == "server_error"
        await client.wait_closed()
    assert "RuntimeError: bug" in caplog.text


async def test_a_bad_header_in_an_answer_makes_a_500_not_a_broken_head() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        headers = [(b"x-injected", b"a\r\nset-cookie: b")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async with serving(app) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        answer = await client.answer()
        assert answer.status == 500
        assert "set-cookie" not in answer.headers
        await client.wait_closed()


@pytest.mark.parametrize("failure", [CutConnection("child silent"), RuntimeError("bug")])
async def test_an_answer_broken_off_is_cut_without_its_last_chunk(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise failure

    async with serving(app) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        received = b""
        with trio.fail_after(WAIT_S):
            while data := await client.stream.receive_some(65536):
                received += data
        assert received.endswith(b"4\r\npart\r\n")  # and no "0\r\n\r\n"
    assert ("Traceback" in caplog.text) == isinstance(failure, RuntimeError)


# ---- what a client cannot do ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414, "request target is longer"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "than 16384 bytes"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n",
            431,
            "more than 100 headers",
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413, "longer than 1000 bytes"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000,
            413,
            "longer than 1000 bytes",
        ),
        (b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            400,
            "Content-Length",
        ),
    ],
    ids=["long-target", "long-header", "many-headers", "long-body", "long-chunked-body",
         "malformed", "length-and-chunked"],
)  # fmt: skip
async def test_a_request_past_a_limit_gets_an_error_body_and_a_closed_connection(
    request_bytes: bytes, status: int, message: str
) -> None:
    async with serving(echo, max_body_bytes=1000) as served:
        client = await Client.connect(served.port)
        await client.send(request_bytes)
        answer = await client.answer()
        assert answer.status == status
        assert answer.headers["connection"] == "close"
        error = answer.json()["error"]
        assert message in error["message"]
        assert (error["code"], error["type"]) == (status, "invalid_request_error")
        assert b"HTTP/1.1" not in await client.wait_closed()  # nothing behind it is answered


async def test_a_head_cut_in_pieces_is_bounded_too() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        await client.send(b"GET / HTTP/1.1\r\nX-Big: ")
        with pytest.raises(trio.BrokenResourceError):  # some piece finds it closed
            for _ in range(100):
                await client.send(b"a" * 1000)
                await trio.testing.wait_all_tasks_blocked()
        assert (await client.answer()).status == 431


async def test_the_requests_before_a_malformed_one_are_answered() -> None:
    async with serving(echo) as served:
        client = await Client.connect(served.port)
        await client.send(b"GET /first HTTP/1.1\r\n\r\nNONSENSE\r\n\r\n")
        assert (await client.answer()).json()["path"] == "/first"
        assert (await client.answer()).status == 400
        await client.wait_closed()


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config()
    config.keep_alive_timeout = 5
    async with serving(echo, config=config) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        await client.answer()
        start = trio.current_time()
        await client.wait_closed()
        assert 5 <= trio.current_time() - start < 6


async def test_a_head_sent_slowly_is_given_up_on_at_the_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config()
    config.keep_alive_timeout = 5
    async with serving(echo, config=config) as served:
        client = await Client.connect(served.port)

        async def trickle() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                    await client.send(bytes([byte]))
                    await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            start = trio.current_time()
            assert await client.wait_closed() == b""
            assert 5 <= trio.current_time() - start < 6
            nursery.cancel_scope.cancel()


async def test_a_body_that_stops_arriving_is_given_up_on_at_the_read_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heard: list[Message] = []

    async def reader(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        while (message := await receive())["type"] == "http.request":
            heard.append(message)
        heard.append(message)  # and answers nothing: the server does

    config = Config()
    config.read_timeout = 5
    async with serving(reader, config=config) as served:
        client = await Client.connect(served.port)
        await client.send(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        start = trio.current_time()
        answer = await client.answer()
        assert 5 <= trio.current_time() - start < 6
        assert answer.status == 408
        assert [m["type"] for m in heard] == ["http.request", "http.disconnect"]
        await client.wait_closed()


async def test_a_connection_closes_after_keep_alive_max_requests() -> None:
    config = Config()
    config.keep_alive_max_requests = 2
    async with serving(echo, config=config) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/1")
        assert "connection" not in (await client.answer()).headers
        await client.request("GET", "/2")
        assert (await client.answer()).headers["connection"] == "close"
        await client.wait_closed()


async def test_a_client_that_stops_reading_loses_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped = trio.Event()

    async def firehose(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except lean_http.ClientDisconnected:
            stopped.set()
            raise

    async with serving(firehose, send_timeout_s=10) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        start = trio.current_time()
        with trio.fail_after(WAIT_S):
            await stopped.wait()
        assert 10 <= trio.current_time() - start < 11


async def test_connections_past_the_limit_wait_for_a_free_slot() -> None:
    async with serving(echo, max_connections=1) as served:
        first = await Client.connect(served.port)
        await first.request("GET", "/1")
        await first.answer()
        second = await Client.connect(served.port)
        await second.request("GET", "/2")
        await trio.testing.wait_all_tasks_blocked()  # the server did all it would do
        readable, _, _ = select.select([second.stream.socket.fileno()], [], [], 0)
        assert not readable  # it answered nothing: it has not even accepted it
        await first.stream.aclose()
        assert (await second.answer()).json()["path"] == "/2"


async def test_no_file_descriptor_outlives_its_connection() -> None:
    async with serving(echo) as served:
        before = open_fds()
        for n in range(20):
            client = await Client.connect(served.port)
            await client.request("GET", "/", *(["Connection: close"] if n % 2 else []))
            await client.answer()
            await client.stream.aclose()
        with trio.fail_after(WAIT_S):
            while open_fds() > before:
                await trio.sleep(0.01)


# ---- shutdown ------------------------------------------------------------------------------------


async def test_shutdown_closes_idle_connections_and_lets_running_requests_finish() -> None:
    release = trio.Event()
    running = trio.Event()

    async def slow(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        running.set()
        await release.wait()
        await answer_json(send, {"finished": True})

    async with serving(slow) as served:
        idle = await Client.connect(served.port)
        busy = await Client.connect(served.port)
        await busy.request("GET", "/")
        await running.wait()
        served.stop.set()
        assert await idle.wait_closed() == b""  # at once, without an answer
        release.set()
        answer = await busy.answer()
        assert answer.json() == {"finished": True}
        assert answer.headers["connection"] == "close"
        await busy.wait_closed()


async def test_shutdown_closes_what_is_still_running_after_the_graceful_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config()
    config.graceful_timeout = 3

    async def hung(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send, [])
            return
        await trio.sleep_forever()

    async with serving(hung, config=config) as served:
        client = await Client.connect(served.port)
        await client.request("GET", "/")
        await trio.testing.wait_all_tasks_blocked()
        served.stop.set()
        start = trio.current_time()
        assert await client.wait_closed() == b""
        assert 3 <= trio.current_time() - start < 4


# ---- Quart apps ----------------------------------------------------------------------------------


async def test_a_quart_app_reads_bodies_and_closes_where_the_rest_is_unread() -> None:
    app = new_app("test")

    @app.post("/echo")
    async def echo_body() -> bytes:
        return bytes(await request_body())

    @app.post("/refuse")
    async def refuse() -> tuple[str, int]:
        return "no", 401

    async with serving(app) as served:
        client = await Client.connect(served.port)
        await client.request("POST", "/echo", body=b"x" * 200000)
        answer = await client.answer()
        assert (answer.status, len(answer.body)) == (200, 200000)
        await client.send(b"POST /refuse HTTP/1.1\r\nContent-Length: 100000\r\n\r\nxx")
        answer = await client.answer()
        assert (answer.status, answer.headers["connection"]) == (401, "close")
        await client.wait_closed()


async def test_the_childs_app_serves_completions_on_a_real_model(tiny_model: Path) -> None:
    from router.child.app import create_app
    from router.child.llama_engine import LlamaCppEngine
    from router.child.service import ModelService
    from router.model_options import EngineOptions

    engine = await LlamaCppEngine.load(EngineOptions(tiny_model, ctx_size=512, threads=1))
    try:
        async with engine.decoding():
            app = create_app(ModelService(engine, max_queue=8), model_id="tiny")
            async with serving(app) as served:

                def use_the_openai_client() -> tuple[str, list[str]]:
                    with openai.OpenAI(
                        base_url=f"http://127.0.0.1:{served.port}/v1",
                        api_key="unused",
                        max_retries=0,
                    ) as client:
                        whole = client.completions.create(
                            model="tiny", prompt="Hello", max_tokens=5, temperature=0
                        )
                        streamed = client.completions.create(
                            model="tiny", prompt="Hello", max_tokens=5, temperature=0, stream=True
                        )
                        return whole.choices[0].text, [c.choices[0].text for c in streamed]

                text, pieces = await trio.to_thread.run_sync(use_the_openai_client)
                assert "".join(pieces) == text
                client = await Client.connect(served.port)
                await client.request("GET", "/health")
                assert (await client.answer()).json() == {"status": "ok"}
    finally:
        engine.close()
