"""Work run on the decode loop's thread (``thread_calls.py``, ``DecodeLoop.run_between_steps``):
embeddings compute there, adding no thread (llama.cpp's OpenMP gave each computing thread a
team of its own, and more workers than CPUs made generation ten times slower); a call's value
or exception comes back to its caller; a caller cancelled before the thread begins its work
gives it up, one cancelled after waits for its end; a stopped loop refuses calls. In process,
on a real tiny model."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from router.child.engine import GenerationRequest, SamplingParams
from router.child.llama_engine import LlamaCppEngine
from router.errors import ModelStopping
from router.model_options import EngineOptions

WAIT_S = 60.0


@asynccontextmanager
async def decoding(tiny_model: Path, **options: object) -> AsyncIterator[LlamaCppEngine]:
    engine = await LlamaCppEngine.load(EngineOptions(tiny_model, ctx_size=512, **options))  # type: ignore[arg-type]
    try:
        async with engine.decoding():
            yield engine
    finally:
        engine.close()


def threads_of_this_process() -> int:
    """OpenMP's workers included, which ``threading`` does not see."""
    return len(os.listdir("/proc/self/task"))


async def test_embeddings_compute_on_the_decode_thread_and_add_no_thread(
    tiny_model: Path,
) -> None:
    two_tokens = GenerationRequest([1, 5, 6], max_tokens=2, sampling=SamplingParams(0.0))
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=2, embeddings=True) as engine:
            async with engine.generate(two_tokens) as stream:  # the decode thread's team
                [piece async for piece in stream]
            before = threads_of_this_process()
            embeddings = await engine.embed(["hello world " * 20, "another text"])
            assert threads_of_this_process() == before
    assert len(embeddings.vectors) == 2


async def test_a_calls_value_or_exception_comes_back(tiny_model: Path) -> None:
    def fails() -> None:
        raise ValueError("from the thread")

    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=1) as engine:
            loop = engine._running_loop()
            name = await loop.run_between_steps(lambda: threading.current_thread().name)
            with pytest.raises(ValueError, match="from the thread"):
                await loop.run_between_steps(fails)
    assert name == "decode loop"


async def test_a_caller_cancelled_before_its_work_began_gives_it_up(tiny_model: Path) -> None:
    release = threading.Event()
    ran: list[str] = []

    def busy() -> None:
        ran.append("busy")
        release.wait(WAIT_S)

    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=1) as engine:
            loop = engine._running_loop()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop.run_between_steps, busy)
                while not ran:  # the thread is in ``busy`` now
                    await trio.sleep(0.001)
                with trio.CancelScope() as scope:
                    scope.cancel()  # before the thread could begin it
                    await loop.run_between_steps(lambda: ran.append("given up"))
                release.set()
            await loop.run_between_steps(lambda: None)  # the thread is past the call
    assert ran == ["busy"]


async def test_a_caller_cancelled_after_its_work_began_waits_for_its_end(
    tiny_model: Path,
) -> None:
    began, release = threading.Event(), threading.Event()
    ended: list[bool] = []
    returned: list[bool] = []

    def work() -> None:
        began.set()
        release.wait(WAIT_S)
        ended.append(True)

    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=1) as engine:
            loop = engine._running_loop()

            async def cancel_then_release(scope: trio.CancelScope) -> None:
                await trio.to_thread.run_sync(began.wait, WAIT_S)
                scope.cancel()
                await trio.sleep(0.05)
                assert returned == []  # the caller still waits for the work's end
                release.set()

            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_then_release, scope)
                    await loop.run_between_steps(work)
                    returned.append(True)
                    assert ended == [True]
                    await trio.lowlevel.checkpoint()  # where the cancellation comes
            assert scope.cancelled_caught
    assert ended == [True]


async def test_a_stopped_loop_refuses_calls(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=1) as engine:
            loop = engine._running_loop()
        with pytest.raises(ModelStopping):
            await loop.run_between_steps(lambda: None)
        # One that reaches the inbox after the thread's last look at it:
        loop.is_stopped = False
        hand_to_thread = loop._hand_to_thread

        def put_as_the_thread_stops(item: object) -> None:
            hand_to_thread(item)
            loop.is_stopped = True

        monkeypatch.setattr(loop, "_hand_to_thread", put_as_the_thread_stops)
        with pytest.raises(ModelStopping):
            await loop.run_between_steps(lambda: None)


async def test_generations_go_on_between_the_groups_of_an_embedding_request(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    with trio.fail_after(WAIT_S):
        async with decoding(tiny_model, threads=1, embeddings=True) as engine:
            loop = engine._running_loop()
            step, embed = loop._step, engine._embed_blocking

            def recorded_step(*, n_threads: int) -> None:
                order.append("step")
                step(n_threads=n_threads)

            def recorded_embed(*args: object) -> object:
                order.append("embed")
                return embed(*args)  # type: ignore[arg-type]

            monkeypatch.setattr(loop, "_step", recorded_step)
            monkeypatch.setattr(engine, "_embed_blocking", recorded_embed)
            longer = GenerationRequest(
                [1, 5, 6], max_tokens=200, sampling=SamplingParams(0.0), ignore_eos=True
            )
            async with engine.generate(longer) as stream:
                pieces = stream.__aiter__()
                await pieces.__anext__()  # it generates
                embeddings = await engine.embed([f"text {index}" for index in range(40)])
                [piece async for piece in pieces]
    assert len(embeddings.vectors) == 40
    calls = [index for index, what in enumerate(order) if what == "embed"]
    assert len(calls) == 5  # 8 texts a call
    assert all("step" in order[start:end] for start, end in itertools.pairwise(calls))
