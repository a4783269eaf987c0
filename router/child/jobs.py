"""One generation as the decode loop runs it (``decode_loop.py``): its slot, its sampler, the
prompt left to evaluate, and the text and log-probabilities not yet handed to its reader;
and the outbox that hands what the loop made to the readers, on the Trio thread."""

from __future__ import annotations

import codecs

import trio

from router.child.engine import Finished, GenerationRequest, Piece, TokenLogprob
from router.child.sampling import Sampler
from router.child.slots import Slot
from router.child.stops import StopScanner

# What a job's reader gets: its text, its end, or the error that ended it.
Item = Piece | Finished | BaseException


class Job:
    """One generation as the loop runs it. ``cancelled`` is the only field the Trio side
    writes outside the loop's turn; everything else belongs to whoever holds the turn."""

    def __init__(self, request: GenerationRequest, send: trio.MemorySendChannel[Item]) -> None:
        self.request = request
        self.send = send
        self.cancelled = False
        self.slot: Slot | None = None
        self.sampler: Sampler | None = None  # set once the job has its slot
        self.to_evaluate: list[int] = []  # prompt tokens not yet in the slot's KV cache
        self.pending_token: int | None = None  # sampled, to be decoded at the next step
        self.budget = 0  # the most tokens it may generate
        self.n_generated = 0
        self.n_reused = 0
        self.logprobs: list[TokenLogprob] = []  # of tokens whose text was not yet sent
        self.logprob_bytes_ahead = 0  # bytes of sent tokens whose text is not yet sent
        self.held: list[Piece] = []  # text kept for the end (``incremental`` is false)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.scanner = StopScanner(request.stop)
        self.t_start = 0.0
        self.t_first_token = 0.0
        # A job whose prompt another running job is evaluating waits for that one (its
        # leader), then copies its KV cache and samples from the same logits: n choices of
        # one prompt, or the same prompt sent at once, evaluate it once.
        self.leader: Job | None = None
        self.followers: list[Job] = []

    def release_logprobs(self, n_bytes: int) -> tuple[TokenLogprob, ...]:
        """The entries of the tokens that spell the next ``n_bytes`` bytes of text sent.

        Text comes out later than its tokens (a possible stop string is held back, a
        character split across tokens waits for its end), and a stop string's tokens never
        come out: so entries go with the text they spell, not with the step they came from.
        """
        if self.logprob_bytes_ahead >= n_bytes:
            self.logprob_bytes_ahead -= n_bytes
            return ()
        missing = n_bytes - self.logprob_bytes_ahead
        released = []
        while missing > 0 and self.logprobs:
            entry = self.logprobs.pop(0)
            released.append(entry)
            missing -= len(entry.piece)
        self.logprob_bytes_ahead = max(0, -missing)
        return tuple(released)


class Outbox:
    """What the loop's turn made for the jobs' readers, until it is handed to Trio."""

    def __init__(self) -> None:
        self._items: list[tuple[trio.MemorySendChannel[Item], Item | None]] = []

    def __bool__(self) -> bool:
        return bool(self._items)

    def post(self, job: Job, item: Item | None) -> None:
        """Queue ``item`` (None: the end of the stream) for the next hand-over; the text of a
        job that is not read incrementally waits for its end, and goes as one piece."""
        if isinstance(item, Piece) and not job.request.incremental:
            job.held.append(item)
            return
        if job.held:
            texts: list[str] = []
            logprobs: list[TokenLogprob] = []
            for piece in job.held:
                texts.append(piece.text)
                logprobs.extend(piece.logprobs)
            self._items.append((job.send, Piece("".join(texts), tuple(logprobs))))
            job.held.clear()
        self._items.append((job.send, item))

    def take(self) -> list[tuple[trio.MemorySendChannel[Item], Item | None]]:
        items, self._items = self._items, []
        return items


def deliver(items: list[tuple[trio.MemorySendChannel[Item], Item | None]]) -> None:
    """Hand ``items`` to their readers; on the Trio thread, and it never waits."""
    for send, item in items:
        try:
            if item is None:
                send.close()
            else:
                send.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader left; its job was (or will be) cancelled
