"""Continuous batching: one thread that decodes every running generation in one batch per step.

Each step puts in one ``llama_batch`` the next token of every generating sequence and then as
much of the waiting prompts as ``n_batch`` leaves room for (chunked prefill), calls
``llama_decode`` once, and samples one token for each sequence whose logits came out. So a
request joins at the next step, a long prompt never stalls the others' generation for more
than one chunk, and a generation that ends, stops or is cancelled frees its slot at once.

The Trio side and the thread meet in three places only: ``submit`` (a thread-safe queue, and
a bell the thread sleeps on when idle), one ``run_sync_soon`` per step that hands the loop
every piece of text that step produced, and ``run_between_steps`` (embeddings and reranking,
run by the thread before its next step: ``thread_calls.py``). A request cancelled on the
Trio side sets a flag the thread reads before each step, so cancellation takes effect within
one token.

One exception, for speed: a lone request that finds the loop idle, and whose first step is
known to be short, has that step run by ``submit`` itself on the Trio thread, on one core
(``inline_steps.py`` says why and when). Whoever steps holds ``_turn``, so the two never
step at once, and the thread goes on with a generation that outlives its first step. The
thread takes submitted jobs off the inbox only while it holds the turn (it sleeps on a
bell), so ``submit`` sees every job still waiting and never steps past one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import llama_cpp
import numpy as np
import trio
from llama_cpp import _internals as internals

from router.child.engine import (
    EngineMetrics,
    Finished,
    FinishReason,
    GenerationRequest,
    Piece,
    TokenLogprob,
)
from router.child.inline_steps import InlineBound
from router.child.jobs import Job, Outbox, deliver
from router.child.sampling import Sampler
from router.child.slots import Slot, common_prefix_length, pick_slot
from router.child.thread_calls import ThreadCall
from router.errors import ModelStopping, RouterError, Unavailable

log = logging.getLogger("router.child")

T = TypeVar("T")
SamplerFactory = Callable[[GenerationRequest], Sampler]
TokenPiece = Callable[[int], bytes]

# The longest ``submit`` waits for the turn the thread holds while idle (the hand-over of a
# step's output, its bookkeeping): far longer than that takes, far shorter than a step.
TURN_WAIT_S = 0.0002


class _Stop:
    """The end of the thread's work: ``stop()`` put it in the inbox."""


_STOP = _Stop()


class _Failure:
    """A bug met in a step run on the Trio side: the thread ends the loop with it, as with
    a bug of its own (every job gets an error; the process is restarted)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_InboxItem = Job | ThreadCall[Any] | _Failure | _Stop


class DecodeLoop:
    """The batch, the slots and the jobs of one context; :meth:`run` is the thread's body."""

    def __init__(
        self,
        context: internals.LlamaContext,
        *,
        slots: Sequence[Slot],
        n_batch: int,
        n_vocab: int,
        n_swa: int,
        vocab: Any,
        make_sampler: SamplerFactory,
        token_piece: TokenPiece,
        slot_prompt_similarity: float,
    ) -> None:
        self._ctx = context
        self._memory = context.memory
        self.slots = list(slots)
        self._n_batch = n_batch
        self._n_vocab = n_vocab
        self._n_swa = n_swa
        self._vocab = vocab
        self._make_sampler = make_sampler
        self._token_piece = token_piece
        self._similarity = slot_prompt_similarity
        self._inbox: queue.SimpleQueue[_InboxItem] = queue.SimpleQueue()
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()  # rung after each put
        # Held by whoever steps (the thread or ``submit``) or runs a call (the thread): the
        # jobs, the slots, the batch, the contexts and the inbox's takings are theirs alone.
        self._turn = threading.Lock()
        self._inline = InlineBound()
        self._n_threads = llama_cpp.llama_n_threads(context.ctx)
        self._n_threads_batch = llama_cpp.llama_n_threads_batch(context.ctx)
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []  # in the order they got their slot
        self._outbox = Outbox()
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self.is_stopped = False
        self.stop_requested = False
        self.metrics = EngineMetrics()
        self._batch = internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        raw = self._batch.batch
        self._tokens = np.ctypeslib.as_array(raw.token, shape=(n_batch,))
        self._positions = np.ctypeslib.as_array(raw.pos, shape=(n_batch,))
        self._wants_logits = np.ctypeslib.as_array(raw.logits, shape=(n_batch,))
        np.ctypeslib.as_array(raw.n_seq_id, shape=(n_batch,))[:] = 1
        self._seq_ids = [raw.seq_id[index] for index in range(n_batch)]

    # ---- the Trio side -------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection  # a KeyboardInterrupt midway could lose the turn
    def submit(self, job: Job) -> None:
        """Queue ``job`` for the next step, or run that step now when the loop is idle and the
        step short (see the module docstring). Raises ModelStopping once the loop has stopped.
        """
        if self.is_stopped:
            raise ModelStopping()
        if self._may_step_here(job.request) and self._step_here(job):
            return
        self._hand_to_thread(job)
        self._refuse_leftovers()

    def _may_step_here(self, request: GenerationRequest) -> bool:
        """Whether ``request``'s first step may be short: a lone generation (not one of several
        choices, which share one evaluation of their prompt) with no grammar, images or
        log-probabilities (whose cost the steps measured do not tell). Whether it is, its
        slot's cache tells: see ``_step_here``."""
        return (
            request.choices == 1
            and request.media is None
            and request.logprobs is None
            and request.sampling.grammar is None
            and self._inline.allows(1, 1)
        )

    def _step_here(self, job: Job) -> bool:
        """Start ``job`` on this thread if the loop is idle, and run its first step here, on
        one core, if it is known to be short; False if the loop is not idle."""
        # The thread holds the turn for a step, or for a few microseconds when idle: wait for
        # it then, so that a request sent right after another's answer is stepped here too.
        if self._active or self._waiting or not self._turn.acquire(timeout=TURN_WAIT_S):
            return False
        try:
            if self.is_stopped:  # meanwhile, its inbox emptied: it would never see the job
                raise ModelStopping()
            if self._active or self._waiting or not self._inbox.empty() or self.stop_requested:
                return False
            llama_cpp.llama_set_n_threads(self._ctx.ctx, 1, 1)
            try:
                self._waiting.append(job)
                self._start_waiting_jobs()  # its slot, and the part of its prompt not cached
                if self._active and job.slot is not None:
                    end = len(job.slot.cached) + len(job.to_evaluate)
                    if self._inline.allows(len(job.to_evaluate), end):
                        self._step(n_threads=1)
            except BaseException as exc:
                self._hand_to_thread(_Failure(exc))
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt: the process ends, the thread fails the job
                return True
            finally:
                llama_cpp.llama_set_n_threads(self._ctx.ctx, self._n_threads, self._n_threads_batch)
            deliver(self._outbox.take())
            if self._active or self._waiting:
                self._bell.put(None)  # the thread goes on with it
            return True
        finally:
            self._turn.release()

    @trio.lowlevel.enable_ki_protection  # between the put and the wait: see ThreadCall
    async def run_between_steps(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the loop's thread before its next step (``thread_calls.py`` says
        why), and return what it returns. Raises ModelStopping once the loop has stopped.

        Cancellation: as ``ThreadCall.result``: gives the work up if the thread has not begun
        it, else waits for its end.
        """
        if self.is_stopped:
            raise ModelStopping()
        call = ThreadCall(work)
        self._hand_to_thread(call)
        self._refuse_leftovers()
        return await call.result()

    def _hand_to_thread(self, item: _InboxItem) -> None:
        self._inbox.put(item)
        self._bell.put(None)

    def _refuse_leftovers(self) -> None:
        """End the jobs left in the inbox of a loop that has stopped (one that stopped as they
        were put in may have emptied it before)."""
        if not self.is_stopped:
            return
        with self._turn:  # held by the thread only until its last hand-over
            jobs, calls = self._drain_inbox()
        deliver([(job.send, item) for job in jobs for item in (ModelStopping(), None)])
        for call in calls:
            call.refuse(ModelStopping())

    def stop(self) -> None:
        """Ask the thread to end: running and queued jobs end with an error."""
        self.stop_requested = True
        self._hand_to_thread(_STOP)

    def close(self) -> None:
        self._batch.close()

    # ---- the thread ----------------------------------------------------------------------

    def run(self, trio_token: trio.lowlevel.TrioToken) -> None:
        """Decode until :meth:`stop`. Runs on its own thread; never raises."""
        self._trio_token = trio_token
        is_idle = True
        try:
            while True:
                if is_idle:
                    self._bell.get()  # asleep without the turn: ``submit`` may step meanwhile
                with self._turn:
                    if not self._take_inbox():
                        break
                    self._start_waiting_jobs()
                    if self._active:
                        self._step(n_threads=max(self._n_threads, self._n_threads_batch))
                    self._flush()
                    is_idle = not (self._active or self._waiting)
        except BaseException as exc:  # a bug here must not leave requests hanging
            log.exception("the decode loop failed")
            error = RouterError(f"generation failed: {type(exc).__name__}: {exc}")
        else:
            error = Unavailable("the model was stopped before this request finished; retry it")
        with self._turn:
            self.is_stopped = True
            queued, calls = self._drain_inbox()
            for job in [*self._active, *self._waiting, *queued]:
                self._outbox.post(job, error)
                self._outbox.post(job, None)
            self._flush()
        for call in calls:
            call.refuse(error)

    def _take_inbox(self) -> bool:
        """Move the jobs submitted so far to the waiting line, and run the calls; False once
        asked to stop. Raises the bug of a step run on the Trio side. Called with the turn
        held."""
        while True:  # the rings of what is taken now: a later ring means a later put
            try:
                self._bell.get_nowait()
            except queue.Empty:
                break
        calls: list[ThreadCall[Any]] = []
        end: _Stop | _Failure | None = None
        while end is None:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop | _Failure):
                end = item
            elif isinstance(item, Job):
                self._waiting.append(item)
            else:
                calls.append(item)
        for call in calls:  # those put while they run wait for the next step: it goes first
            call.run()
        if isinstance(end, _Failure):
            raise end.error
        return end is None

    def _drain_inbox(self) -> tuple[list[Job], list[ThreadCall[Any]]]:
        jobs: list[Job] = []
        calls: list[ThreadCall[Any]] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return jobs, calls
            if isinstance(item, Job):
                jobs.append(item)
            elif isinstance(item, ThreadCall):
                calls.append(item)

    def _start_waiting_jobs(self) -> None:
        """Give waiting jobs free slots, oldest first; drop the cancelled ones."""
        for job in [job for job in self._active if job.cancelled]:
            self._finish(job, FinishReason.CANCELLED)
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                self._outbox.post(job, None)
                continue
            free = [slot for slot in self.slots if not slot.is_processing]
            if not free:
                return
            self._waiting.popleft()
            try:
                self._start(job, pick_slot(free, job.request.prompt_tokens, self._similarity))
            except Exception as exc:
                self._fail(job, exc)

    def _start(self, job: Job, slot: Slot) -> None:
        prompt = list(job.request.prompt_tokens)
        job.t_start = time.perf_counter()
        job.slot = slot
        job.budget = slot.n_ctx - len(prompt)
        if job.request.max_tokens is not None:
            job.budget = min(job.budget, job.request.max_tokens)
        # A prompt with images reuses nothing: its image positions match any other image's.
        with_cache = job.request.cache_prompt and job.request.media is None
        reuse = self._reusable(slot, prompt) if with_cache else 0
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.id, reuse, -1):
            reuse = 0  # this memory cannot drop a tail (recurrent models): start afresh
            llama_cpp.llama_memory_seq_rm(self._memory, slot.id, -1, -1)
        del slot.cached[reuse:]
        job.n_reused = reuse
        self.metrics.prompt_tokens_cached_total += reuse
        job.to_evaluate = prompt[reuse:]
        slot.start(len(prompt), reuse)
        self._active.append(job)
        if job.budget <= 0:
            self._finish(job, FinishReason.LENGTH)
            return
        job.sampler = self._make_sampler(job.request)
        if job.request.media is not None:
            self._prefill_media(job)
            return
        leader = self._leader_for(job)
        if leader is not None:
            job.leader = leader
            leader.followers.append(job)
            job.to_evaluate = []

    def _prefill_media(self, job: Job) -> None:
        """Evaluate ``job``'s images, and its text up to them, in its slot's sequence, at
        once and outside the batch (``multimodal.py``); the text after them goes on as any
        prompt's. The other jobs wait for it: one prefill, one step."""
        media = job.request.media
        assert media is not None and job.slot is not None
        media.prefill(self._ctx.ctx, job.slot.id, self._n_batch)
        job.slot.cached.extend(job.to_evaluate[: media.n_prefill])
        del job.to_evaluate[: media.n_prefill]
        job.slot.n_prompt_tokens_processed += media.n_prefill
        self.metrics.prompt_tokens_total += media.n_prefill

    def _leader_for(self, job: Job) -> Job | None:
        """A running job still evaluating the same prompt, from further back than ``job``
        would start, if any."""
        if len(job.to_evaluate) < 2:
            return None
        prompt = job.request.prompt_tokens
        for other in self._active:
            if (
                other is not job
                and other.leader is None
                and len(other.to_evaluate) > 0
                and other.request.prompt_tokens == prompt
            ):
                return other
        return None

    def _follow(self, leader: Job, index: int) -> None:
        """Give ``leader``'s followers its evaluated prompt, and their first token from the
        same logits (row ``index``)."""
        assert leader.slot is not None
        for job in leader.followers:
            if job not in self._active:
                continue  # cancelled meanwhile
            assert job.slot is not None
            llama_cpp.llama_memory_seq_cp(self._memory, leader.slot.id, job.slot.id, -1, -1)
            job.slot.cached[:] = leader.slot.cached
            job.slot.n_prompt_tokens_processed = len(leader.slot.cached)
            # It evaluated none of its prompt itself: all of it counts as cached.
            self.metrics.prompt_tokens_cached_total += len(leader.slot.cached) - job.n_reused
            job.n_reused = len(leader.slot.cached)
            job.leader = None
            try:
                self._sample(job, index)
            except Exception as exc:
                self._fail(job, exc)
        leader.followers.clear()

    def _reusable(self, slot: Slot, prompt: list[int]) -> int:
        """How many of ``prompt``'s first tokens the slot's cache can give: the common prefix,
        less the last prompt token (it must be decoded again for its logits), and none when a
        sliding-window cache has already dropped what that prefix needs."""
        reuse = min(common_prefix_length(slot.cached, prompt), len(prompt) - 1)
        if 0 < reuse < len(slot.cached):  # a tail to drop: is what comes before it still there?
            oldest = llama_cpp.llama_memory_seq_pos_min(self._memory, slot.id)
            if oldest > max(0, reuse - max(1, self._n_swa)):
                return 0
        return reuse

    def _step(self, *, n_threads: int) -> None:
        """One ``llama_decode``: a token for each generating job, then prompt chunks."""
        outputs: list[tuple[Job, int]] = []  # jobs whose logits come out, and where
        prefill: list[tuple[Job, int]] = []  # jobs with prompt tokens in the batch, and how many
        n = end = 0  # tokens in the batch, and the furthest position they reach (+1)
        for job in self._active:
            if job.pending_token is not None:
                assert job.slot is not None
                self._put(n, [job.pending_token], len(job.slot.cached), job.slot.id)
                self._wants_logits[n] = 1
                outputs.append((job, n))
                n += 1
                end = max(end, len(job.slot.cached) + 1)
        for job in self._active:
            if n >= self._n_batch:
                break
            if not job.to_evaluate or job.sampler is None:
                continue
            assert job.slot is not None
            chunk = job.to_evaluate[: self._n_batch - n]
            self._put(n, chunk, len(job.slot.cached), job.slot.id)
            n += len(chunk)
            end = max(end, len(job.slot.cached) + len(chunk))
            prefill.append((job, len(chunk)))
            if len(chunk) == len(job.to_evaluate):
                self._wants_logits[n - 1] = 1
                outputs.append((job, n - 1))
        if n == 0:
            return
        self._batch.batch.n_tokens = n
        started = time.perf_counter()
        n_sequences = len({id(job) for job, _ in [*outputs, *prefill]})
        if self._decode(outputs, prefill, n_sequences) and n_sequences == 1:
            self._inline.record(n, end, time.perf_counter() - started, n_threads)

    def _decode(
        self, outputs: list[tuple[Job, int]], prefill: list[tuple[Job, int]], n_sequences: int
    ) -> bool:
        """``llama_decode`` the batch, and sample the tokens it made; False if it failed."""
        status = llama_cpp.llama_decode(self._ctx.ctx, self._batch.batch)
        metrics = self.metrics
        metrics.n_decode_total += 1
        metrics.n_busy_slots_total += n_sequences
        if status != 0:
            self._decode_failed(status, [job for job, _ in outputs] + [job for job, _ in prefill])
            return False
        for job, count in prefill:
            assert job.slot is not None
            job.slot.cached.extend(job.to_evaluate[:count])
            del job.to_evaluate[:count]
            job.slot.n_prompt_tokens_processed += count
            metrics.prompt_tokens_total += count
        for job, index in outputs:
            if job.pending_token is not None:
                assert job.slot is not None
                job.slot.cached.append(job.pending_token)
                job.pending_token = None
            if job.followers:
                self._follow(job, index)
            try:
                self._sample(job, index)
            except Exception as exc:
                self._fail(job, exc)
        return True

    def _put(self, start: int, tokens: list[int], position: int, seq_id: int) -> None:
        end = start + len(tokens)
        self._tokens[start:end] = tokens
        self._positions[start:end] = np.arange(position, position + len(tokens))
        self._wants_logits[start:end] = 0
        for index in range(start, end):
            self._seq_ids[index][0] = seq_id

    def _sample(self, job: Job, index: int) -> None:
        assert job.sampler is not None and job.slot is not None
        token = job.sampler.sample(self._ctx.ctx, index)
        if job.n_generated == 0:
            job.t_first_token = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(job, FinishReason.STOP)
            return
        job.n_generated += 1
        job.slot.n_decoded = job.n_generated
        piece = self._token_piece(token)
        if job.request.logprobs is not None:
            job.logprobs.append(self._logprob(index, token, piece, job.request.logprobs))
        text, hit_stop_string = job.scanner.feed(job.decoder.decode(piece))
        if text:
            self._outbox.post(job, Piece(text, job.release_logprobs(len(text.encode()))))
        if hit_stop_string:
            self._finish(job, FinishReason.STOP, flush=False)
        elif job.n_generated >= job.budget:
            self._finish(job, FinishReason.LENGTH)
        else:
            job.pending_token = token

    def _logprob(self, index: int, token: int, piece: bytes, top_n: int) -> TokenLogprob:
        """``token``'s log-probability under the raw logits at ``index`` (before sampling
        settings, as llama-server's ``n_probs``), with the ``top_n`` likeliest tokens."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        top: tuple[tuple[int, bytes, float], ...] = ()
        if top_n > 0:
            best = np.argpartition(-logits, min(top_n, self._n_vocab) - 1)[:top_n]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple(
                (int(t), self._token_piece(int(t)), float(logits[t]) - log_total) for t in best
            )
        return TokenLogprob(token, piece, float(logits[token]) - log_total, top)

    def _finish(self, job: Job, reason: FinishReason, *, flush: bool = True) -> None:
        """End ``job``: its last text, its Finished, the end of its stream; free its slot."""
        slot = job.slot
        assert slot is not None
        if flush and reason is not FinishReason.CANCELLED:
            tail = job.scanner.flush() + job.decoder.decode(b"", final=True)
            if tail or job.logprobs:
                self._outbox.post(job, Piece(tail, tuple(job.logprobs)))
                job.logprobs.clear()
        now = time.perf_counter()
        first = job.t_first_token or now
        finished = Finished(
            reason=reason,
            prompt_tokens=len(job.request.prompt_tokens),
            completion_tokens=job.n_generated,
            cached_tokens=job.n_reused,
            prompt_ms=(first - job.t_start) * 1000,
            predicted_ms=(now - first) * 1000 if job.t_first_token else 0.0,
            stop_word=job.scanner.hit,
        )
        metrics = self.metrics
        metrics.prompt_seconds_total += finished.prompt_ms / 1000
        metrics.tokens_predicted_total += job.n_generated
        metrics.tokens_predicted_seconds_total += finished.predicted_ms / 1000
        metrics.n_tokens_max = max(metrics.n_tokens_max, len(slot.cached) + 1)
        self._outbox.post(job, finished)
        self._outbox.post(job, None)
        self._release(job)

    def _fail(self, job: Job, error: BaseException) -> None:
        """End ``job`` with ``error``; its slot's cache is in an unknown state: empty it."""
        if job.slot is not None:
            llama_cpp.llama_memory_seq_rm(self._memory, job.slot.id, -1, -1)
            job.slot.cached.clear()
        self._outbox.post(job, error)
        self._outbox.post(job, None)
        self._release(job)

    def _release(self, job: Job) -> None:
        if job in self._active:
            self._active.remove(job)
        for follower in job.followers:  # it left before its prompt was evaluated
            assert follower.slot is not None
            follower.leader = None
            follower.to_evaluate = list(follower.request.prompt_tokens[len(follower.slot.cached) :])
        job.followers.clear()
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        if job.slot is not None:
            job.slot.release()

    def _decode_failed(self, status: int, jobs: list[Job]) -> None:
        reason = (
            "no room left in the KV cache" if status == 1 else f"llama_decode returned {status}"
        )
        error = RouterError(f"generation failed: {reason}")
        for job in dict.fromkeys(jobs):
            self._fail(job, error)

    # ---- to the Trio side ----------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the loop everything this step produced, in one call that never waits."""
        if not self._outbox or self._trio_token is None:
            return
        items = self._outbox.take()
        with contextlib.suppress(trio.RunFinishedError):  # the server, and its readers, are gone
            self._trio_token.run_sync_soon(deliver, items)
