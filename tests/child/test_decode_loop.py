"""The decode loop's first step run by ``submit`` on the Trio thread (``decode_loop.py``):
when the loop is idle and the step short, a one-token answer is made without the decode
thread; a longer generation goes on there with the same text; a long prompt waits for the
thread; a bug in such a step ends the loop as a bug of the thread's own would. In process,
on a real tiny model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from router.child.engine import GenerationRequest, SamplingParams
from router.child.llama_engine import LlamaCppEngine
from router.errors import RouterError
from router.model_options import EngineOptions

GREEDY = SamplingParams(temperature=0.0)
WAIT_S = 60.0


@asynccontextmanager
async def decoding(tiny_model: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = await LlamaCppEngine.load(EngineOptions(tiny_model, ctx_size=2048, threads=1))
    try:
        async with engine.decoding():
            yield engine
    finally:
        engine.close()


async def generated_text(engine: LlamaCppEngine, request: GenerationRequest) -> str:
    async with engine.generate(request) as stream:
        return "".join([piece.text async for piece in stream])


async def test_a_short_first_step_is_run_without_the_decode_thread(tiny_model: Path) -> None:
    one_token = GenerationRequest([1, 5, 6, 7], max_tokens=1, sampling=GREEDY, cache_prompt=False)
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            on_the_thread = await generated_text(engine, one_token)  # the pace is unknown yet
            others_ran: list[bool] = []

            async def another() -> None:
                others_ran.append(True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(another)  # runs at the first wait for the thread
                here = await generated_text(engine, one_token)
                assert others_ran == []  # made, delivered and read without a wait
    assert here == on_the_thread


async def test_a_generation_that_outlives_its_first_step_goes_on_on_the_thread(
    tiny_model: Path,
) -> None:
    longer = GenerationRequest(
        [1, 5, 6, 7], max_tokens=24, sampling=GREEDY, ignore_eos=True, cache_prompt=False
    )
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            on_the_thread = await generated_text(engine, longer)
            async with engine.generate(longer) as stream:
                pieces = stream.__aiter__()
                others_ran: list[bool] = []

                async def another() -> None:
                    others_ran.append(True)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(another)
                    first = await pieces.__anext__()
                    first_came_at_once = others_ran == []
                rest = [piece.text async for piece in pieces]
                assert stream.finished.completion_tokens == 24
    assert first_came_at_once
    assert first.text + "".join(rest) == on_the_thread


async def test_a_long_prompt_waits_for_the_decode_thread(tiny_model: Path) -> None:
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model) as engine:
            short = GenerationRequest([1, 5], max_tokens=1, sampling=GREEDY, cache_prompt=False)
            await generated_text(engine, short)  # sets the pace: a few microseconds a token
            long_prompt = [1] + [5 + position % 50 for position in range(1500)]
            others_ran: list[bool] = []

            async def another() -> None:
                others_ran.append(True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(another)
                long = GenerationRequest(long_prompt, max_tokens=1, sampling=GREEDY)
                await generated_text(engine, long)
                assert others_ran == [True]  # it waited for the thread


async def test_a_bug_in_a_step_run_on_the_trio_thread_ends_the_loop_as_the_threads_own(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_token = GenerationRequest([1, 5, 6, 7], max_tokens=1, sampling=GREEDY)
    engine = await LlamaCppEngine.load(EngineOptions(tiny_model, ctx_size=512, threads=1))
    try:
        with trio.fail_after(WAIT_S), pytest.raises(ExceptionGroup) as ended:
            async with engine.decoding():
                await generated_text(engine, one_token)
                loop = engine._running_loop()

                def broken_step() -> None:
                    raise ValueError("a bug")

                monkeypatch.setattr(loop, "_step", broken_step)
                with pytest.raises(RouterError, match="generation failed: ValueError: a bug"):
                    await generated_text(engine, one_token)
                await trio.sleep_forever()  # the loop's end takes the block down
        assert ended.group_contains(RuntimeError, match="the decode loop ended by itself")
    finally:
        engine.close()
