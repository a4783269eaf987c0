"""What happens to the models, over HTTP: ``GET /models/sse`` streams the pool's events
(``router/models/events.py``) as llama.cpp's router does, and ``GET /models/logs`` gives a
model's last lines of output.

``/models/sse`` answers ``text/event-stream``: each event is one ``data: {json}`` message in
llama.cpp's shape, and a ``: ping`` comment every ``PING_S`` seconds keeps proxies from
closing a quiet stream. ``?model=a&model=b`` (or ``?model=a,b``) keeps those models' events
(and the ``"*"`` ones); ``?logs=1`` adds the children's output lines
(``{"event": "log", "model": M, "data": {"line": ..., "stream": "stderr"}}``). The stream ends
when the client leaves, when it falls too far behind (it reconnects and reads ``GET /models``),
and when the router stops. Both routes sit behind the key and Host checks of every other.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
from quart import Response, request
from quart_trio import QuartTrio

from router.edge.web import json_response
from router.errors import InvalidField
from router.models.events import EventHub
from router.models.pool import ModelPool
from router.models.state import RECENT_LINES, ModelState

PING_S = 15.0  # a comment this often on a quiet stream
DEFAULT_LOG_LINES = 200
# Sent first, once the stream is subscribed: a client knows that no event from now on is lost.
SUBSCRIBED = b": subscribed\n\n"
_TRUE = ("1", "true", "yes", "on")


def register_events_api(
    app: QuartTrio, pool: ModelPool, resolve: Callable[[str], Awaitable[ModelState]]
) -> None:
    """Add ``GET /models/sse`` and ``GET /models/logs`` to ``app``. ``resolve`` turns a name
    the client gave (an alias too) into the model, if the caller may use it."""

    async def model_ids(names: list[str]) -> frozenset[str] | None:
        wanted = [name.strip() for value in names for name in value.split(",") if name.strip()]
        if not wanted:
            return None
        return frozenset([(await resolve(name)).spec.id for name in wanted])

    @app.get("/models/sse")
    async def model_events() -> Response:
        models = await model_ids(request.args.getlist("model"))
        wants_logs = request.args.get("logs", "").lower() in _TRUE
        return Response(
            event_stream(pool.events, models=models, logs=wants_logs),
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            },
        )

    @app.get("/models/logs")
    async def model_logs() -> Response:
        name = request.args.get("model")
        if not name:
            raise InvalidField("model", "is required: GET /models/logs?model=NAME[&n=200]")
        state = await resolve(name)
        count = _line_count(request.args.get("n"))
        lines = list(state.recent_lines)[-count:]
        return json_response({"model": state.spec.id, "lines": lines})


async def event_stream(
    hub: EventHub, *, models: frozenset[str] | None, logs: bool, ping_s: float = PING_S
) -> AsyncIterator[bytes]:
    """The SSE bytes of ``hub``'s events from now on: ``SUBSCRIBED`` first, then one message
    per event and a ping comment after every ``ping_s`` of silence, until the hub ends the
    stream (the router stops, the reader fell behind).

    Cancellation: unsubscribes (the client left).
    """
    with hub.subscribe(logs=logs, models=models) as events:
        yield SUBSCRIBED
        while True:
            with trio.move_on_after(ping_s) as quiet:
                try:
                    event = await events.receive()
                except trio.EndOfChannel:
                    return
            if quiet.cancelled_caught:
                yield b": ping\n\n"
                continue
            payload = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))
            yield b"data: " + payload.encode() + b"\n\n"


def _line_count(value: str | None) -> int:
    if value is None:
        return DEFAULT_LOG_LINES
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= RECENT_LINES:
        raise InvalidField("n", f"must be a whole number from 1 to {RECENT_LINES}, not {value!r}")
    return count
