"""What the raw ASGI paths in front of the Quart apps (the router's and the child's
``fast_path.py``) share: the ASGI callables' types, the body's framing, reading the body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from werkzeug.exceptions import RequestTimeout

from router.edge.asgi_lifespan import Message

Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's declared length; None when it has none, or is framed any other way."""
    length = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif lowered == b"transfer-encoding":
            return None
    return length


async def read_body(receive: Receive, timeout_s: float) -> bytearray | None:
    """The whole body; None if the client left. Raises RequestTimeout after ``timeout_s``."""
    body = bytearray()
    with trio.move_on_after(timeout_s) as waiting:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if not message.get("more_body", False):
                return body
    assert waiting.cancelled_caught
    raise RequestTimeout()
