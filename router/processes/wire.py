"""A small HTTP/1.1 client for talking to our children (and to remote upstreams): one pool of
keep-alive connections per child, request bodies sent without copies, response bodies read as
they arrive.

Why not httpx: on the router's hot path, httpx's request building and connection pool cost
about as much as everything else together (profiled: ~0.8 ms of a ~1.4 ms overhead per
request). A child speaks plain HTTP/1.1 over a Unix socket or loopback TCP, answers with
Content-Length or chunked bodies, and never needs redirects, cookies, TLS or HTTP/2, so the
client it needs is this one.

A remote upstream (``models/remote.py``: a conf.d ``url`` model, a peer router) uses it too, over
TCP or TLS (trio's ``SSLStream``) with its own ``Host`` and key: then the proxy forwards to it
exactly as to a child (the same streaming, back-pressure, deadlines and errors), with no second
client and no second forwarding path to keep in step with the first.

What keeps one client's answer from reaching another (the pool is shared by every client):
interim ``1xx`` answers are skipped, never taken for the answer; and a connection goes back to
the pool only when its request was sent whole and its answer was read to its last byte, as its
framing says. Anything else closes it.
"""

from __future__ import annotations

import contextlib
import math
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import trio

from router.errors import ChildTimeout, ClosedBeforeAnswer, WireError

MAX_HEAD_BYTES = 64 * 1024
RECEIVE_BYTES = 64 * 1024
# A request up to this size is written in one piece with its head; a larger body is written
# from the caller's buffer, a slice at a time, while the answer is awaited.
SMALL_BODY_BYTES = 64 * 1024
SEND_SLICE_BYTES = 1024 * 1024
MAX_IN_USE = 128  # connections carrying requests to one child at once
MAX_IDLE = 32  # kept-alive connections waiting for the next request; a child accepts 256
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")

RequestBody = bytes | bytearray | memoryview


class ChildConnections:
    """Keep-alive connections to one child, at ``unix:/path`` or ``http://host:port``.

    At most ``MAX_IN_USE`` requests use a connection at once (more wait for one) and at most
    ``MAX_IDLE`` wait idle: a child accepts a bounded number of connections (and has a bounded
    number of file descriptors), and its health checks must still find room.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: ssl.SSLContext | None = None,
        host_header: str = "child",
        headers: Sequence[tuple[str, str]] = (),
        connect_timeout_s: float = math.inf,
    ) -> None:
        """``address`` may also be ``https://host:port[/base]`` (a remote upstream, verified
        with ``tls``): requests then go under ``/base``. ``host_header`` is the ``Host`` sent;
        ``headers`` go with every request (an upstream's ``Authorization``)."""
        self.address = address
        parsed = urllib.parse.urlsplit(address) if "://" in address else None
        self._tls = tls if parsed is not None and parsed.scheme == "https" else None
        if parsed is not None and parsed.scheme == "https" and self._tls is None:
            self._tls = ssl.create_default_context()
        self._server_name = (parsed.hostname or "") if parsed is not None else ""
        self._base_path = parsed.path.rstrip("/") if parsed is not None else ""
        self._host_header = host_header
        self._headers = list(headers)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[trio.abc.Stream] = []
        self._is_closed = False
        self._in_use = trio.Semaphore(MAX_IN_USE)

    async def _connect(self) -> trio.abc.Stream:
        try:
            if self.address.startswith("unix:"):
                return await trio.open_unix_socket(self.address[len("unix:") :])
            parsed = urllib.parse.urlsplit(self.address)
            default_port = 80 if self._tls is None else 443
            stream = await trio.open_tcp_stream(parsed.hostname or "", parsed.port or default_port)
            if self._tls is None:
                return stream
            secure = trio.SSLStream(
                stream, self._tls, server_hostname=self._server_name, https_compatible=True
            )
            try:
                await secure.do_handshake()
            except BaseException:
                await _close_quietly(stream)
                raise
            else:
                return secure
        except trio.BrokenResourceError as exc:  # the TLS handshake failed: say why
            reason = exc.__cause__ or exc
            raise WireError(f"TLS with {self.address} failed: {reason}") from exc
        except OSError as exc:
            raise WireError(f"cannot connect to {self.address}: {exc.strerror or exc}") from exc

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: RequestBody,
        *,
        timeout_s: float = math.inf,
    ) -> WireResponse:
        """Send one request; return once the response's final head has arrived.

        ``body`` is sent from the caller's buffer, never copied. ``timeout_s`` bounds each wait
        for the child: to take the next piece of the request, or to send the next byte of the
        answer (``ChildTimeout``). A reused connection that turns out to have been closed by the
        child before it read anything is replaced by a new one, once.
        Cancellation: the connection is closed.
        """
        lines = [
            f"{method} {self._base_path}{target} HTTP/1.1",
            f"Host: {self._host_header}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in (*headers, *self._headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        await trio.lowlevel.checkpoint_if_cancelled()
        try:  # a free place is taken without a schedule point (a round of trio's loop)
            self._in_use.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(timeout_s) as waiting:
                await self._in_use.acquire()
            if waiting.cancelled_caught:
                raise ChildTimeout(
                    f"every connection to {self.address} stayed busy for {timeout_s:g} s"
                ) from None
        try:
            response = await self._request(head, body, method, timeout_s)
        except BaseException:
            self._in_use.release()
            raise
        response.on_close = self._in_use.release
        return response

    async def _request(
        self, head: bytes, body: RequestBody, method: str, timeout_s: float
    ) -> WireResponse:
        for attempt in range(2):
            is_reused = bool(self._idle) and attempt == 0
            if is_reused:
                stream = self._idle.pop()
            else:
                connect_timeout_s = min(timeout_s, self._connect_timeout_s)
                with trio.move_on_after(connect_timeout_s) as connecting:
                    stream = await self._connect()
                if connecting.cancelled_caught:
                    raise ChildTimeout(
                        f"{self.address} took no connection for {connect_timeout_s:g} s"
                    )
            try:
                return await self._exchange(stream, head, body, method, timeout_s)
            except ClosedBeforeAnswer:
                await _close_quietly(stream)
                if is_reused:
                    continue
                raise
            except WireError:
                await _close_quietly(stream)
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await _close_quietly(stream)
                if is_reused:
                    continue
                raise WireError(f"connection to {self.address} failed: {exc}") from exc
            except BaseException:
                await _close_quietly(stream)
                raise
        raise WireError(f"{self.address} closed every connection")

    async def _exchange(
        self, stream: trio.abc.Stream, head: bytes, body: RequestBody, method: str, timeout_s: float
    ) -> WireResponse:
        """Send the request and read the answer's head, both under one no-progress deadline."""
        watchdog = trio.CancelScope(deadline=trio.current_time() + timeout_s)

        def progress() -> None:
            watchdog.deadline = trio.current_time() + timeout_s

        response: WireResponse | None = None
        is_sent = False
        with watchdog:
            if len(body) <= SMALL_BODY_BYTES:
                await _send_all(stream, head + body)
                is_sent = True
                progress()
                response = await WireResponse.read_head(self, stream, method, timeout_s, progress)
            else:
                # The child may answer before it has read the whole body (a 404, a 413): the
                # body is written while the answer is awaited, and the rest is dropped then.
                failure: Exception | None = None
                async with trio.open_nursery() as nursery:

                    async def send_request() -> None:
                        nonlocal is_sent
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError, OSError
                        ):  # then the answer, or the lack of one, says what happened
                            await _send_progressively(stream, head, body, progress)
                            is_sent = True

                    nursery.start_soon(send_request)
                    try:
                        response = await WireResponse.read_head(
                            self, stream, method, timeout_s, progress
                        )
                    except Exception as exc:  # re-raised below, not wrapped in a group
                        failure = exc
                    nursery.cancel_scope.cancel()
                if failure is not None:
                    raise failure
        if response is None:
            raise ChildTimeout(
                f"{self.address} {'sent nothing' if is_sent else 'took no more of the request'} "
                f"for {timeout_s:g} s"
            )
        if not is_sent:
            response.is_reusable = False  # what was left of the request would be read as a new one
        return response

    async def _give_back(self, stream: trio.abc.Stream) -> None:
        if self._is_closed or len(self._idle) >= MAX_IDLE:
            await _close_quietly(stream)
        else:
            self._idle.append(stream)

    async def aclose(self) -> None:
        """Close the idle connections; ones in use close when their response is done."""
        self._is_closed = True
        idle, self._idle = self._idle, []
        for stream in idle:
            await _close_quietly(stream)


async def _send_all(stream: trio.abc.Stream, data: bytes) -> None:
    """``stream.send_all(data)``, without its schedule point when a socket takes all of
    ``data`` at once (a request's small head and body, nearly always): trio's socket layer
    yields to its loop after every operation that did not wait, a round that costs a
    forwarded request more than the write itself."""
    if isinstance(stream, trio.SocketStream):
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = os.write(stream.socket.fileno(), data)  # the socket is non-blocking
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"the send failed: {exc}") from exc
        if sent == len(data):
            return
        await stream.send_all(memoryview(data)[sent:])
        return
    await stream.send_all(data)


async def _receive_some(stream: trio.abc.Stream, timeout_s: float = math.inf) -> bytes | None:
    """The next bytes ``stream`` receives (b"" at its end), or None when ``timeout_s`` passes
    without any.

    From a socket without trio's stream layers, as ``_send_all`` writes: trio's socket read
    yields to its loop after every read that did not wait, a round that costs a streamed event
    (a wait for it, then its read) about as much as the rest of its forwarding. Here a read
    after a wait takes no second round, and a deadline (a cancel scope) is set only for a wait.
    A read that found bytes already there yields as trio's does: a child that sends faster than
    the router forwards cannot keep the router's other tasks waiting.
    """
    if not isinstance(stream, trio.SocketStream):
        with trio.move_on_after(timeout_s):
            return bytes(await stream.receive_some(RECEIVE_BYTES))
        return None
    fd = stream.socket.fileno()
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        data = os.read(fd, RECEIVE_BYTES)  # the socket is non-blocking
    except BlockingIOError:
        pass
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    with trio.CancelScope(deadline=trio.current_time() + timeout_s):
        while True:
            await trio.lowlevel.wait_readable(fd)
            with contextlib.suppress(BlockingIOError):
                return os.read(fd, RECEIVE_BYTES)
    return None


async def _send_progressively(
    stream: trio.abc.Stream, head: bytes, body: RequestBody, progress: Callable[[], None]
) -> None:
    await stream.send_all(head)
    with memoryview(body) as view:
        for start in range(0, len(view), SEND_SLICE_BYTES):
            await stream.send_all(view[start : start + SEND_SLICE_BYTES])
            progress()


class WireResponse:
    """A response whose head has been read; its body is read with ``aiter_raw``."""

    def __init__(
        self,
        owner: ChildConnections,
        stream: trio.abc.Stream,
        status: int,
        headers: list[tuple[str, str]],
        rest: bytes,
        method: str,
        timeout_s: float,
    ) -> None:
        self.status_code = status
        self.headers = headers
        self._owner = owner
        self.on_close: Callable[[], None] | None = None  # frees the request's place
        self._stream: trio.abc.Stream | None = stream
        self._buffer = rest
        self._timeout_s = timeout_s
        self._is_done = False
        self._chunk_left: int | None = None  # chunked: data left in this chunk; None: a line next
        self._is_in_trailers = False  # chunked: the last chunk came; trailer lines, then a blank
        self._framing_error: WireError | None = None  # met after pieces not yet passed on
        lowered = {name.lower(): value for name, value in headers}
        self.content_type = lowered.get("content-type", "")
        self.is_reusable = "close" not in lowered.get("connection", "").lower()
        self._chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
        self._length: int | None = None
        length = lowered.get("content-length")
        if length is not None and not self._chunked:
            if not length.strip().isdigit() or not length.isascii():
                raise WireError(f"bad Content-Length in the answer: {length[:40]!r}")
            self._length = int(length)
        if method == "HEAD" or status in (204, 304):
            self._length = 0
            self._chunked = False

    @classmethod
    async def read_head(
        cls,
        owner: ChildConnections,
        stream: trio.abc.Stream,
        method: str,
        timeout_s: float = math.inf,
        progress: Callable[[], None] = lambda: None,
    ) -> WireResponse:
        """Read up to the final answer's head, skipping interim (1xx) ones."""
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await _receive_some(stream)
                assert data is not None  # no deadline of its own: the caller's watchdog's
                if not data and not buffer:
                    raise ClosedBeforeAnswer(
                        f"{owner.address} closed the connection before answering"
                    )
                if not data:
                    raise WireError("the connection ended in the middle of the response head")
                progress()
                buffer += data
                if len(buffer) > MAX_HEAD_BYTES:
                    raise WireError("response head too large")
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            status, headers = _parse_head(head)
            if status == 101:
                raise WireError("the child switched protocols, which the router never asks for")
            if not 100 <= status < 200:
                return cls(owner, stream, status, headers, buffer, method, timeout_s)

    @property
    def content_length(self) -> int | None:
        """The body's length, when the answer says it (``Content-Length``, not chunked)."""
        return self._length

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked framing removed).

        Raises WireError when the connection breaks, and ChildTimeout when the child sends
        nothing for the request's ``timeout_s``. One generator a framing, not one inside
        another: a streamed event passes through one.
        """
        if self._chunked:
            return self._chunks()
        if self._length is not None:
            return self._counted(self._length)
        return self._to_the_end()

    async def _chunks(self) -> AsyncIterator[bytes]:
        with _broken_as_wire_error():
            while True:
                pieces = self._take_chunked()
                if pieces:  # what one read brought, in one piece: one write to the client
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if self._is_done:
                    return
                self._buffer += await self._receive()

    def _take_chunked(self) -> list[bytes]:
        """The body's bytes the buffer holds, its chunked framing undone as far as it goes
        (a chunk is passed on as it arrives, however large it is); ``_is_done`` once the last
        chunk and its trailers are in. The one reader of the framing, for trio's reads and a
        worker thread's (``read_pieces_blocking``) alike.

        Bad framing raises WireError, but only once the pieces before it are passed on.
        """
        if self._framing_error is not None:
            raise self._framing_error
        pieces: list[bytes] = []
        try:
            at = self._undo_chunking(pieces)
        except WireError as exc:
            if not pieces:
                raise
            self._framing_error = exc  # raised at the next call: the answer ends there
            return pieces
        self._buffer = self._buffer[at:]  # cut once, not at every piece and line
        return pieces

    def _undo_chunking(self, pieces: list[bytes]) -> int:
        """Append to ``pieces`` the data of the buffer's chunks; how much of it was read."""
        buffer = self._buffer
        at = 0
        while not self._is_done:
            left = self._chunk_left
            if left is None:  # a chunk's size line, or a trailer line after the last chunk
                end = buffer.find(b"\r\n", at)
                if end < 0:
                    if len(buffer) - at > MAX_HEAD_BYTES:
                        raise WireError("a chunk size or trailer line is too long")
                    break
                line, at = buffer[at:end], end + 2
                if self._is_in_trailers:
                    self._is_done = not line
                elif (size := self._chunk_size(line)) == 0:
                    self._is_in_trailers = True
                else:
                    self._chunk_left = size
            elif left > 0:
                if at == len(buffer):
                    break
                data = buffer[at : at + left]
                pieces.append(data)
                at += len(data)
                self._chunk_left = left - len(data)
            elif buffer.startswith(b"\r\n", at):  # the end of a chunk's data
                at += 2
                self._chunk_left = None
            elif buffer[at:] in (b"", b"\r"):
                break
            else:
                raise WireError("a chunk is longer than its size line says")
        return at

    @property
    def can_be_read_from_a_thread(self) -> bool:
        """Whether ``read_pieces_blocking`` may read the body: chunked, over a plain socket."""
        return self._chunked and isinstance(self._stream, trio.SocketStream)

    def read_pieces_blocking(self, wait_readable: Callable[[int, float], bool]) -> list[bytes]:
        """The body's next bytes, from a worker thread while the task that owns the answer
        waits for it (``edge/stream_pump.py``); [] once the body has ended.

        ``wait_readable(fd, timeout_s)`` blocks until ``fd`` has bytes (False: ``timeout_s``
        passed without); it may raise to stop the read. Raises WireError and ChildTimeout as
        ``aiter_raw`` does.
        """
        assert isinstance(self._stream, trio.SocketStream) and self._chunked
        fd = self._stream.socket.fileno()
        with _broken_as_wire_error():
            while True:
                pieces = self._take_chunked()
                if pieces or self._is_done:
                    return pieces
                try:
                    data = os.read(fd, RECEIVE_BYTES)  # the socket is non-blocking
                except BlockingIOError:
                    if not wait_readable(fd, self._timeout_s):
                        raise ChildTimeout(
                            f"{self._owner.address} sent nothing for {self._timeout_s:g} s"
                        ) from None
                    continue
                if not data:
                    raise WireError("the child closed the connection in the middle of the answer")
                self._buffer += data

    async def _counted(self, remaining: int) -> AsyncIterator[bytes]:
        with _broken_as_wire_error():
            while remaining > 0:
                if not self._buffer:
                    self._buffer = await self._receive()
                data, self._buffer = self._buffer[:remaining], self._buffer[remaining:]
                remaining -= len(data)
                yield data
            self._is_done = True

    async def _to_the_end(self) -> AsyncIterator[bytes]:
        self.is_reusable = False  # delimited by the connection's end
        with _broken_as_wire_error():
            if self._buffer:
                yield self._buffer
                self._buffer = b""
            while data := await self._receive(allow_eof=True):
                yield data
            self._is_done = True

    @staticmethod
    def _chunk_size(line: bytes) -> int:
        digits = line.split(b";", 1)[0].strip()
        if digits and len(digits) <= 16 and all(c in _HEX_DIGITS for c in digits):
            return int(digits, 16)
        raise WireError(f"bad chunk size line: {line[:40]!r}")

    async def _receive(self, *, allow_eof: bool = False) -> bytes:
        assert self._stream is not None
        data = await _receive_some(self._stream, self._timeout_s)
        if data is None:
            raise ChildTimeout(f"{self._owner.address} sent nothing for {self._timeout_s:g} s")
        if not data and not allow_eof:
            raise WireError("the child closed the connection in the middle of the answer")
        return data

    async def aclose(self) -> None:
        """Give the connection back if the answer was read whole, else close it."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            if self._is_done and self.is_reusable and not self._buffer:
                await self._owner._give_back(stream)
            else:
                await _close_quietly(stream)
        finally:
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()


@contextlib.contextmanager
def _broken_as_wire_error() -> Iterator[None]:
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise WireError(f"the connection broke in the middle of the answer: {exc}") from exc


def _parse_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith("HTTP/1.")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
        or not parts[1].isascii()
    ):
        raise WireError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise WireError(f"malformed header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), headers


async def _close_quietly(stream: trio.abc.Stream) -> None:
    with (
        trio.CancelScope(shield=True),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
    ):
        await stream.aclose()


async def probe(address: str, path: str, *, timeout_s: float) -> int:
    """``GET path`` on a connection of its own, closed afterwards: the answer's status.

    For health checks, which must never queue behind (or reuse) a connection that carries
    requests. Raises WireError, ChildTimeout when the child is silent for ``timeout_s``.
    Cancellation: the connection is closed.
    """
    connections = ChildConnections(address)
    try:
        response = await connections.request("GET", path, [], b"", timeout_s=timeout_s)
        try:
            async for _ in response.aiter_raw():
                pass
        finally:
            await response.aclose()
        return response.status_code
    finally:
        await connections.aclose()
