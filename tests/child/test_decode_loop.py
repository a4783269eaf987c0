"""The decode loop's first steps run by ``submit`` on the Trio thread (``decode_loop.py``,
``inline_steps.py``): when the loop is idle and the step known to be short, a one-token
answer is made without the decode thread; a longer generation goes on there with the same
text; a long prompt, a request's several choices and a job behind another wait for the
thread; a bug in such a step ends the loop as a bug of the thread's own would. In process,
on a real tiny model; which thread stepped is recorded, so no test depends on timing (the
bound on a step's time is set out of reach of a slow machine)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import llama_cpp
import pytest
import trio
import trio.testing

from router.child.decode_loop import DecodeLoop
from router.child.engine import GenerationRequest, SamplingParams
from router.child.inline_steps import InlineBound
from router.child.jobs import Job
from router.child.llama_engine import LlamaCppEngine
from router.child.service import ModelService
from router.errors import ModelStopping, RouterError
from router.model_options import EngineOptions

GREEDY = SamplingParams(temperature=0.0)
WAIT_S = 60.0
SHORT_PROMPT = [1, 5, 6, 7]


def one_token(prompt: list[int] = SHORT_PROMPT, **fields: object) -> GenerationRequest:
    return GenerationRequest(prompt, max_tokens=1, sampling=GREEDY, cache_prompt=False, **fields)  # type: ignore[arg-type]


class Steps:
    """Which thread ran each of a loop's steps: "here" (the Trio thread's) or "thread"."""

    def __init__(self, loop: DecodeLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        self.where: list[str] = []
        self.n_threads: list[int] = []  # the context's, as each step ran
        step = loop._step
        trio_thread = threading.current_thread()

        def recorded(*, n_threads: int) -> None:
            self.where.append("here" if threading.current_thread() is trio_thread else "thread")
            self.n_threads.append(llama_cpp.llama_n_threads(loop._ctx.ctx))
            step(n_threads=n_threads)

        monkeypatch.setattr(loop, "_step", recorded)


@asynccontextmanager
async def decoding(
    tiny_model: Path, *, parallel: int = 1, threads: int = 1
) -> AsyncIterator[LlamaCppEngine]:
    options = EngineOptions(
        tiny_model, ctx_size=2048 * parallel, threads=threads, parallel=parallel
    )
    engine = await LlamaCppEngine.load(options)
    # Out of reach of a slow machine: which steps run here then depends on their size alone.
    engine._running_loop()._inline = InlineBound(limit_s=WAIT_S)
    try:
        async with engine.decoding():
            yield engine
    finally:
        engine.close()


async def generated_text(engine: LlamaCppEngine, request: GenerationRequest) -> str:
    async with engine.generate(request) as stream:
        return "".join([piece.text async for piece in stream])


def test_a_step_is_known_short_only_within_one_measured_to_fit() -> None:
    bound = InlineBound(limit_s=0.002)
    assert not bound.allows(1, 1)  # nothing measured yet
    bound.record(64, 64, 0.0006, n_threads=1)  # 64 new tokens, from position 0
    assert bound.allows(64, 64) and bound.allows(8, 8) and not bound.allows(65, 65)
    assert not bound.allows(21, 1921)  # after a long cached prefix: not known
    bound.record(1, 1900, 0.0008, n_threads=1)  # one token generated at position 1,899
    assert bound.allows(1, 1900) and bound.allows(64, 64) and not bound.allows(21, 1921)
    bound.record(200, 200, 0.0015, n_threads=2)  # 3 ms on one core: not known to fit
    assert not bound.allows(65, 65)
    bound.record(10, 10, 0.003, n_threads=1)  # a smaller one overran: the machine is slower
    assert not bound.allows(64, 64) and not bound.allows(9, 9) and bound.allows(1, 1900)


async def test_a_short_first_step_is_run_without_the_decode_thread(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            steps = Steps(engine._running_loop(), monkeypatch)
            on_the_thread = await generated_text(engine, one_token())  # nothing known yet
            others_ran: list[bool] = []

            async def another() -> None:
                others_ran.append(True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(another)  # runs at the first wait for the thread
                here = await generated_text(engine, one_token())
                assert others_ran == []  # made, delivered and read without a wait
    assert steps.where == ["thread", "here"]
    assert here == on_the_thread


async def test_a_generation_that_outlives_its_first_step_goes_on_on_the_thread(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    longer = GenerationRequest(
        SHORT_PROMPT, max_tokens=24, sampling=GREEDY, ignore_eos=True, cache_prompt=False
    )
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            on_the_thread = await generated_text(engine, longer)
            steps = Steps(engine._running_loop(), monkeypatch)
            async with engine.generate(longer) as stream:
                text = "".join([piece.text async for piece in stream])
                assert stream.finished.completion_tokens == 24
    assert steps.where == ["here"] + ["thread"] * 23
    assert text == on_the_thread


async def test_a_long_prompt_waits_for_the_decode_thread(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_prompt = [1] + [5 + position % 50 for position in range(1500)]
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            await generated_text(engine, one_token())  # known: a step of 4 tokens fits
            steps = Steps(engine._running_loop(), monkeypatch)
            await generated_text(engine, one_token(long_prompt))
            await generated_text(engine, one_token())
    assert steps.where == ["thread", "here"]


async def test_a_requests_choices_wait_for_the_thread_and_share_their_prompt(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, parallel=4) as engine:
            await generated_text(engine, one_token())
            loop = engine._running_loop()
            steps = Steps(loop, monkeypatch)
            evaluated = loop.metrics.prompt_tokens_total
            choices = [one_token(choices=4)] * 4
            outputs = await ModelService(engine, max_queue=4).complete(choices)
    assert len(outputs) == 4
    assert set(steps.where) == {"thread"}
    assert loop.metrics.prompt_tokens_total - evaluated == len(SHORT_PROMPT)  # once for all


async def test_a_job_is_never_stepped_ahead_of_one_waiting_in_the_inbox(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ends: list[str] = []

    async def generate(engine: LlamaCppEngine, name: str, request: GenerationRequest) -> None:
        await generated_text(engine, request)
        ends.append(name)

    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:  # one slot: one generation at a time
            await generated_text(engine, one_token())
            loop = engine._running_loop()
            await trio.sleep(0.05)  # the thread sleeps on its bell
            bell, loop._bell = loop._bell, queue.SimpleQueue()  # rung now: it sleeps on
            steps = Steps(loop, monkeypatch)
            try:
                async with trio.open_nursery() as nursery:
                    # Log-probabilities: never stepped here, it waits in the inbox.
                    nursery.start_soon(generate, engine, "first", one_token(logprobs=0))
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(generate, engine, "second", one_token())
                    await trio.testing.wait_all_tasks_blocked()
                    assert steps.where == []  # the second found the first waiting
                    bell.put(None)
            finally:
                bell.put(None)  # whatever happened: the thread must hear its stop
    assert ends == ["first", "second"]
    assert steps.where == ["thread", "thread"]


async def test_a_first_step_here_runs_on_one_core_and_starts_no_thread(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=2) as engine:
            await generated_text(engine, one_token())  # the decode thread's OpenMP team
            loop = engine._running_loop()
            context = loop._ctx.ctx
            steps = Steps(loop, monkeypatch)
            threads = len(os.listdir("/proc/self/task"))
            await generated_text(engine, one_token())
            assert len(os.listdir("/proc/self/task")) == threads
            assert (
                llama_cpp.llama_n_threads(context),
                llama_cpp.llama_n_threads_batch(context),
            ) == (2, 2)
    assert steps.where == ["here"]
    assert steps.n_threads == [1]


async def test_a_job_that_reaches_a_stopped_loop_is_refused(tiny_model: Path) -> None:
    """A job put in the inbox after the thread's last look at it ends with an error, and
    does not wait for an answer that never comes."""
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            loop = engine._running_loop()
        assert loop.is_stopped
        with pytest.raises(ModelStopping):
            await generated_text(engine, one_token())
        send, receive = trio.open_memory_channel[object](10)
        loop._hand_to_thread(Job(one_token(), send))  # type: ignore[arg-type]
        loop._refuse_leftovers()
        assert isinstance(receive.receive_nowait(), ModelStopping)
        with pytest.raises(trio.EndOfChannel):
            receive.receive_nowait()


async def test_a_bug_in_a_step_run_on_the_trio_thread_ends_the_loop_as_the_threads_own(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = EngineOptions(tiny_model, ctx_size=512, threads=1)
    engine = await LlamaCppEngine.load(options)
    engine._running_loop()._inline = InlineBound(limit_s=WAIT_S)
    failed_on: list[threading.Thread] = []
    try:
        with trio.fail_after(WAIT_S), pytest.raises(ExceptionGroup) as ended:
            async with engine.decoding():
                await generated_text(engine, one_token())
                loop = engine._running_loop()

                def broken_step(*, n_threads: int) -> None:
                    failed_on.append(threading.current_thread())
                    raise ValueError("a bug")

                monkeypatch.setattr(loop, "_step", broken_step)
                with pytest.raises(RouterError, match="generation failed: ValueError: a bug"):
                    await generated_text(engine, one_token())
                await trio.sleep_forever()  # the loop's end takes the block down
        assert ended.group_contains(RuntimeError, match="the decode loop ended by itself")
        assert failed_on == [threading.main_thread()]
    finally:
        engine.close()
