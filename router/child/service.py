"""The model behind the routes: the admission queue in front of the engine.

Streamed generations run as tasks in a nursery the app owns, not inside the response's
async generator: Trio forbids a nursery (the engine opens one) to span a ``yield`` of a
generator that a framework may abandon. The response generator only reads a memory channel;
when it is closed (the client left), the task's next send fails and the engine stops within
one token.

Tokenizing, templating and detokenizing are blocking work proportional to the text (llama.cpp
takes seconds to minutes on some megabyte prompts), so they run on worker threads, never on
the event loop, and a prompt that cannot fit the context is refused from its size in bytes
before it is tokenized at all.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import trio

from router.child.admission import Admission
from router.child.engine import Embeddings, Engine, Finished, GenerationRequest, Piece
from router.child.parsing import LLAMA_SERVER_DEFAULTS, RequestDefaults
from router.child.responses import StreamItem
from router.errors import InvalidField, PromptTooLarge, RouterError, Unavailable

T = TypeVar("T")

# Text work on more characters (or tokens) than this can take llama.cpp seconds (minutes, for
# some megabyte prompts); work on less takes milliseconds, and never waits behind the former.
LARGE_TEXT = 16 * 1024
# Work on fewer characters (or tokens) than this takes llama.cpp microseconds: less than the
# round trip to a worker thread, so it runs on the loop.
SMALL_TEXT = 1024


class ModelService:
    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int,
        request_defaults: RequestDefaults = LLAMA_SERVER_DEFAULTS,
    ) -> None:
        self.engine = engine
        self.request_defaults = request_defaults  # --temp, --n-predict: what a request omits
        self.admission = Admission(engine.capacity, max_queue)
        self._stop_deadline = math.inf
        self._running: set[trio.CancelScope] = set()
        # One thread per slot, plus one, for large text work: a thread whose client left runs
        # on to its end (llama.cpp cannot stop a tokenization midway) and keeps its place until
        # then, so clients that give up cannot pile up work on the model's cores.
        self._large_text_work = trio.CapacityLimiter(engine.capacity + 1)

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

    async def complete(
        self, requests: Sequence[GenerationRequest]
    ) -> list[tuple[list[Piece], Finished]]:
        """Run ``requests`` (a request's choices) together to the end; return what each made.

        They take one slot each, all at once. The first to fail cancels the others and its
        error is raised. Raises QueueFull when the queue is full.
        Cancellation: leaves the queue, or stops the generations within one token.
        """
        outputs: dict[int, tuple[list[Piece], Finished]] = {}

        async def generate(index: int, request: GenerationRequest) -> None:
            async with self.engine.generate(request) as stream:
                pieces = [piece async for piece in stream]
            outputs[index] = (pieces, stream.finished)

        with self._until_stopped() as scope:
            async with self.admission.slots(len(requests)):
                await _each_at_once(requests, generate)
        if scope.cancelled_caught:
            raise _stopped()
        return [outputs[index] for index in range(len(requests))]

    async def start_stream(
        self, nursery: trio.Nursery, requests: Sequence[GenerationRequest]
    ) -> trio.MemoryReceiveChannel[StreamItem]:
        """Wait for a slot per request (a request's choices), then start generating them all
        in ``nursery``; return the output channel.

        The channel yields ``(index, piece)`` for each piece of text of ``requests[index]``
        and ``(index, Finished)`` when it ends; or a RouterError, and nothing after it, when
        one of them failed (the others are then cancelled). Raises QueueFull (before anything
        starts) when the queue is full.
        Cancellation: while queued, leaves the queue; once started, close the channel to stop.
        """
        receive: trio.MemoryReceiveChannel[StreamItem] = await nursery.start(self._stream, requests)
        return receive

    async def _stream(
        self,
        requests: Sequence[GenerationRequest],
        task_status: trio.TaskStatus[trio.MemoryReceiveChannel[StreamItem]],
    ) -> None:
        async with self.admission.slots(len(requests)):
            send, receive = trio.open_memory_channel[StreamItem](math.inf)
            task_status.started(receive)

            async def generate(index: int, request: GenerationRequest) -> None:
                async with self.engine.generate(request) as stream:
                    async for piece in stream:
                        send.send_nowait((index, piece))
                send.send_nowait((index, stream.finished))

            with send:
                try:
                    with self._until_stopped() as scope:
                        await _each_at_once(requests, generate)
                    if scope.cancelled_caught:
                        send.send_nowait(_stopped())
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

    async def off_loop(self, work: Callable[[], T], *, size: int) -> T:
        """Run ``work``, blocking text work on the model, on a worker thread.

        ``size`` is how many characters or tokens it handles: up to SMALL_TEXT, it runs on
        the loop at once; past LARGE_TEXT, it waits for one of ``capacity + 1`` places; work
        in between runs at once on a thread.
        Cancellation: returns at once, waiting or not; a thread already running goes on to its
        end in the background, keeping its place until then.
        """
        if size <= SMALL_TEXT:
            # A cancellation point, not a schedule point: small work takes less time than a
            # round of Trio's loop, which would only delay the request by that round.
            await trio.lowlevel.checkpoint_if_cancelled()
            return work()
        limiter = self._large_text_work if size > LARGE_TEXT else None  # None: trio's own
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=limiter)

    async def tokenize_prompt(
        self, text: str, *, field: str, add_special: bool, parse_special: bool = True
    ) -> list[int]:
        """The tokens of ``text``, the value of the request's ``field``.

        Raises PromptTooLarge, without tokenizing, when ``text`` has more bytes than the
        context could hold whatever its tokens, and InvalidField when it is not text.
        Cancellation: as ``off_loop``.
        """
        if text.isascii():  # its size in bytes is known at once: a refusal needs no thread
            self._check_size(field, len(text))
        return await self.off_loop(
            partial(self._tokenize_prompt, text, field, add_special, parse_special),
            size=len(text),
        )

    async def count_prompt_tokens(self, texts: Sequence[str], *, field: str) -> list[int]:
        """How many tokens each of ``texts`` (``field[0]``, ``field[1]``...) makes, with BOS.

        Raises as ``tokenize_prompt``, for the first text at fault.
        Cancellation: as ``off_loop``.
        """
        for index, text in enumerate(texts):
            if text.isascii():
                self._check_size(f"{field}[{index}]", len(text))

        def count() -> list[int]:
            return [
                len(self._tokenize_prompt(text, f"{field}[{index}]", True, True))
                for index, text in enumerate(texts)
            ]

        return await self.off_loop(count, size=sum(len(text) for text in texts))

    def _tokenize_prompt(
        self, text: str, field: str, add_special: bool, parse_special: bool
    ) -> list[int]:
        try:
            self._check_size(field, len(text.encode("utf-8")))
        except UnicodeEncodeError as exc:
            raise InvalidField(field, _not_text(exc)) from None
        return self.engine.tokenize(text, add_special=add_special, parse_special=parse_special)

    def _check_size(self, field: str, n_bytes: int) -> None:
        """Raise PromptTooLarge if ``n_bytes`` of text cannot fit the context, whatever their
        tokens: every token stands for ``max_token_bytes`` at most."""
        info = self.engine.info
        if info.max_token_bytes is not None and n_bytes > info.n_ctx * info.max_token_bytes:
            raise PromptTooLarge(field, n_bytes, info.n_ctx, info.max_token_bytes)

    async def embed(self, texts: list[str]) -> Embeddings:
        """Embed ``texts`` in one slot. Cancellation: as ``complete``."""
        async with self.admission.slot():
            return await self.engine.embed(texts)

    async def rerank(self, prompts: list[list[int]]) -> list[float]:
        """Score ``prompts`` (a query with each document) in one slot. Cancellation: as
        ``complete``."""
        async with self.admission.slot():
            return await self.engine.rerank(prompts)


async def _each_at_once(
    requests: Sequence[GenerationRequest],
    run: Callable[[int, GenerationRequest], Awaitable[None]],
) -> None:
    """``run(index, request)`` for each of ``requests``, all at once, in a nursery of their
    own (one request runs alone, without one). The first to raise cancels the others, and
    its exception is raised as it is, not in a group.
    Cancellation: cancels them all.
    """
    if len(requests) == 1:
        await run(0, requests[0])
        return
    failures: list[Exception] = []

    async def guarded(index: int, request: GenerationRequest) -> None:
        try:
            await run(index, request)
        except Exception as exc:
            if not failures:
                failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index, request in enumerate(requests):
            nursery.start_soon(guarded, index, request)
    if failures:
        raise failures[0]


def _not_text(error: UnicodeEncodeError) -> str:
    surrogate = ascii(error.object[error.start])
    return f"is not text: it holds {surrogate}, half of a UTF-16 surrogate pair"


def _stopped() -> Unavailable:
    return Unavailable("the model was stopped before this request finished; retry it")
