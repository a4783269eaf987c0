"""The model behind the routes: the admission queue in front of the engine.

Streamed generations run as tasks in a nursery the app owns, not inside the response's
async generator: Trio forbids a nursery (the engine opens one) to span a ``yield`` of a
generator that a framework may abandon. The response generator only reads a memory channel;
when it is closed (the client left), the task's next send fails and the engine stops within
one token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from router.child.admission import Admission
from router.child.engine import Embeddings, Engine, Finished, GenerationRequest
from router.errors import RouterError, Unavailable

StreamItem = str | Finished | RouterError


class ModelService:
    def __init__(self, engine: Engine, *, max_queue: int) -> None:
        self.engine = engine
        self.admission = Admission(engine.capacity, max_queue)
        self._stop_deadline = math.inf
        self._running: set[trio.CancelScope] = set()

    def stop_within(self, timeout_s: float) -> None:
        """Let running and queued requests go on for ``timeout_s`` more, then cut them short.

        A request cut short ends properly: a 503 body, or an SSE error event at the end of a
        stream, never a dropped connection.
        """
        self._stop_deadline = trio.current_time() + timeout_s
        for scope in self._running:
            scope.deadline = min(scope.deadline, self._stop_deadline)

    @contextmanager
    def _until_stopped(self) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope(deadline=self._stop_deadline)
        self._running.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._running.discard(scope)

    async def complete(self, request: GenerationRequest) -> tuple[str, Finished]:
        """Generate to the end and return the text.

        Raises QueueFull when the queue is full.
        Cancellation: leaves the queue, or stops the generation within one token.
        """
        with self._until_stopped() as scope:
            async with self.admission.slot(), self.engine.generate(request) as stream:
                text = "".join([piece async for piece in stream])
        if scope.cancelled_caught:
            raise _stopped()
        return text, stream.finished

    async def start_stream(
        self, nursery: trio.Nursery, request: GenerationRequest
    ) -> trio.MemoryReceiveChannel[StreamItem]:
        """Wait for a slot, then start generating in ``nursery``; return the output channel.

        The channel yields text pieces, then one Finished, or a RouterError if the engine
        failed midway. Raises QueueFull (before anything starts) when the queue is full.
        Cancellation: while queued, leaves the queue; once started, close the channel to stop.
        """
        receive: trio.MemoryReceiveChannel[StreamItem] = await nursery.start(self._stream, request)
        return receive

    async def _stream(
        self,
        request: GenerationRequest,
        task_status: trio.TaskStatus[trio.MemoryReceiveChannel[StreamItem]],
    ) -> None:
        async with self.admission.slot():
            send, receive = trio.open_memory_channel[StreamItem](math.inf)
            task_status.started(receive)
            with send:
                try:
                    with self._until_stopped() as scope:
                        async with self.engine.generate(request) as stream:
                            async for piece in stream:
                                send.send_nowait(piece)
                    if scope.cancelled_caught:
                        send.send_nowait(_stopped())
                    else:
                        send.send_nowait(stream.finished)
                except trio.BrokenResourceError:
                    return  # the reader left; generate() has stopped the engine
                except Exception as exc:  # this task must never take the server down
                    error = (
                        exc
                        if isinstance(exc, RouterError)
                        else RouterError(f"generation failed: {type(exc).__name__}: {exc}")
                    )
                    try:
                        send.send_nowait(error)
                    except trio.BrokenResourceError:
                        return

    async def embed(self, texts: list[str]) -> Embeddings:
        """Embed ``texts`` in one slot. Cancellation: as ``complete``."""
        async with self.admission.slot():
            return await self.engine.embed(texts)


def _stopped() -> Unavailable:
    return Unavailable("the model was stopped before this request finished; retry it")
