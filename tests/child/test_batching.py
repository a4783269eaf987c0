"""Continuous batching and the prompt cache, on real children (``decode_loop.py``, ``slots.py``).

Greedy output must not depend on what else is in the batch; a prompt that starts like a
slot's cached tokens evaluates only the rest, in the slot that holds the longest such prefix;
a long prompt is evaluated in chunks between the other requests' tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.processes import ChildProcess, running_child

COMPLETION = "/v1/completions"


def _client(child: ChildProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=child.openai_base_url, api_key="x", max_retries=0)


def _completion(base_url: str, prompt: str | list[int], max_tokens: int, **extra: object) -> dict:  # type: ignore[type-arg]
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    response = httpx.post(base_url + COMPLETION, json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def four_slots(tiny_model: Path) -> Iterator[ChildProcess]:
    with running_child(
        tiny_model, "--ctx-size", "2048", "--parallel", "4", "--alias", "tiny"
    ) as child:
        yield child


def test_the_context_is_split_between_the_slots(four_slots: ChildProcess) -> None:
    props = httpx.get(four_slots.base_url + "/props").json()
    assert props["total_slots"] == 4
    assert props["default_generation_settings"]["n_ctx"] == 512
    slots = httpx.get(four_slots.base_url + "/slots").json()
    assert [slot["id"] for slot in slots] == [0, 1, 2, 3]
    assert {slot["n_ctx"] for slot in slots} == {512}


def test_a_prompt_longer_than_a_slot_is_refused(four_slots: ChildProcess) -> None:
    response = httpx.post(
        four_slots.base_url + COMPLETION, json={"prompt": [5] * 600, "max_tokens": 1}
    )
    assert response.status_code == 400
    assert "512" in response.json()["error"]["message"]


def test_the_second_turn_reuses_the_first_turns_tokens(four_slots: ChildProcess) -> None:
    history = [7 + (index * 13) % 200 for index in range(300)]
    first = _completion(four_slots.base_url, history, 8)
    assert first["usage"]["prompt_tokens"] == 300
    second = _completion(four_slots.base_url, [*history, 9, 10, 11], 4)
    assert second["usage"]["prompt_tokens"] == 303
    slots = httpx.get(four_slots.base_url + "/slots").json()
    served = max(slots, key=lambda slot: slot["n_prompt_tokens_cache"])
    # Everything of the history was in the cache; only the three new tokens were evaluated.
    assert served["n_prompt_tokens"] == 303
    assert served["n_prompt_tokens_cache"] == 300
    assert served["n_prompt_tokens_processed"] == 303


def test_a_prompt_goes_to_the_slot_holding_its_prefix(four_slots: ChildProcess) -> None:
    """Two conversations, A then B, then A again: A's second turn finds A's slot (the least
    recently used one would be another), then B's finds B's."""
    a = [20 + (index * 7) % 150 for index in range(200)]
    b = [30 + (index * 11) % 150 for index in range(200)]
    _completion(four_slots.base_url, a, 2)
    _completion(four_slots.base_url, b, 2)
    for _ in range(2):  # fill the other slots with something else
        _completion(four_slots.base_url, [40 + index for index in range(50)], 2, cache_prompt=False)
    for history in (a, b):
        stream = _stream_final_chunk(four_slots.base_url, [*history, 5, 6])
        assert stream["timings"]["cache_n"] == 200
        assert stream["timings"]["prompt_n"] == 2


def test_cache_prompt_false_evaluates_the_whole_prompt(four_slots: ChildProcess) -> None:
    history = [50 + (index * 3) % 100 for index in range(100)]
    _completion(four_slots.base_url, history, 1)
    final = _stream_final_chunk(four_slots.base_url, history, cache_prompt=False)
    assert final["timings"]["cache_n"] == 0
    assert final["timings"]["prompt_n"] == 100


def _stream_final_chunk(base_url: str, prompt: list[int], **extra: object) -> dict:  # type: ignore[type-arg]
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": True, **extra}
    with httpx.stream("POST", base_url + COMPLETION, json=body, timeout=120) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in response.iter_lines()
            if line.startswith("data: {")
        ]
    return next(event for event in events if "timings" in event)


def test_a_long_prompt_does_not_stall_a_running_generation(tiny_model: Path) -> None:
    """With 16-token batches a 480-token prompt needs 30 steps: a stream that started first
    and wants 20 more tokens gets them all before the long prompt's first token."""
    with running_child(
        tiny_model, "--ctx-size", "1024", "--parallel", "2", "--batch-size", "16", "--ubatch-size",
        "16", "--alias", "tiny",
    ) as child:  # fmt: skip
        order: list[str] = []

        async def main() -> None:
            async with httpx.AsyncClient(base_url=child.base_url, timeout=120) as client:
                body = {"prompt": [5, 6, 7], "max_tokens": 24, "temperature": 0, "stream": True,
                        "ignore_eos": True}  # fmt: skip
                async with client.stream("POST", COMPLETION, json=body) as short:
                    lines = short.aiter_lines()
                    async for line in lines:
                        if line.startswith("data: {"):
                            break  # the short generation runs

                    async def long_request() -> None:
                        await client.post(COMPLETION, json={"prompt": [9] * 480, "max_tokens": 1})
                        order.append("long prompt answered")

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(long_request)
                        async for line in lines:
                            if line == "data: [DONE]":
                                order.append("short stream done")

        trio.run(main)
        assert order == ["short stream done", "long prompt answered"]


def _alone_then_together(
    base_url: str, prompts: list[str | list[int]], body: dict
) -> tuple[list[str], list[str]]:  # type: ignore[type-arg]
    """Each prompt's greedy text, first one request at a time, then all at once."""
    alone = [_completion(base_url, prompt, **body)["choices"][0]["text"] for prompt in prompts]
    together: list[str] = [""] * len(prompts)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:

            async def one(index: int) -> None:
                response = await client.post(COMPLETION, json={"prompt": prompts[index], **body})
                together[index] = response.json()["choices"][0]["text"]

            async with trio.open_nursery() as nursery:
                for index in range(len(prompts)):
                    nursery.start_soon(one, index)

    trio.run(main)
    return alone, together


def test_greedy_output_does_not_depend_on_the_batch(tiny_model: Path) -> None:
    """Eight prompts of different lengths, each alone and then all in one batch (their
    prompts evaluated together, then their tokens): token for token the same text."""
    prompts: list[str | list[int]] = [
        [5 + (index * 7 + position * 3) % 50 for position in range(3 + index * 5)]
        for index in range(8)
    ]
    with running_child(
        tiny_model, "--ctx-size", "2048", "--parallel", "8", "--alias", "tiny"
    ) as child:
        body = {"max_tokens": 40, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
        alone, together = _alone_then_together(child.base_url, prompts, body)
        slots = httpx.get(child.base_url + "/slots").json()
    assert together == alone
    assert len(set(alone)) > 1
    # They really ran together: each of the eight slots served one of them.
    assert [slot["next_token"]["n_decoded"] for slot in slots] == [40] * 8


@pytest.mark.gemma
def test_greedy_output_of_a_quantized_model_does_not_depend_on_the_batch(
    gemma_model: Path,
) -> None:
    """The same with Gemma's Q4_K weights, three at once. (From four rows up, llama.cpp's CPU
    backend multiplies repacked quantized weights with another kernel, a gemm that sums in
    another order than the 1-3-row gemv, so near-ties can flip: llama-server does the same.)"""
    prompts: list[str | list[int]] = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a land far away,",
    ]
    with running_child(
        gemma_model, "--threads", "2", "--ctx-size", "2048", "--parallel", "3", "--alias", "g"
    ) as child:
        body = {"max_tokens": 24, "temperature": 0, "cache_prompt": False}
        alone, together = _alone_then_together(child.base_url, prompts, body)
    assert together == alone
    assert all(text.strip() for text in alone)


def test_openai_client_streams_from_several_slots_at_once(four_slots: ChildProcess) -> None:
    client = _client(four_slots)
    texts: list[str] = []

    async def main() -> None:
        async def one() -> None:
            stream = await trio.to_thread.run_sync(
                lambda: client.completions.create(
                    model="tiny", prompt="hello", max_tokens=16, stream=True, temperature=0
                )
            )
            texts.append(await trio.to_thread.run_sync(lambda: "".join(
                chunk.choices[0].text for chunk in stream if chunk.choices
            )))  # fmt: skip

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)

    trio.run(main)
    assert len(texts) == 4
    assert len(set(texts)) == 1  # greedy, same prompt: the same text in every slot


def test_the_same_prompt_sent_at_once_gives_each_request_its_own_answer(
    tiny_model: Path,
) -> None:
    """Requests with one prompt that arrive together evaluate it once (the others copy the
    first one's KV cache): each still gets the text it would get alone, and counts its whole
    prompt (cache_n + prompt_n)."""
    prompt = [5 + (position * 7) % 50 for position in range(300)]
    with running_child(
        tiny_model, "--ctx-size", "4096", "--parallel", "4", "--batch-size", "16",
        "--ubatch-size", "16", "--alias", "tiny",
    ) as child:  # fmt: skip
        body = {"max_tokens": 20, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
        alone, together = _alone_then_together(child.base_url, [prompt] * 4, body)
        finals: list[dict] = []  # type: ignore[type-arg]

        async def main() -> None:
            async def one() -> None:
                finals.append(
                    await trio.to_thread.run_sync(
                        lambda: _stream_final_chunk(child.base_url, prompt, max_tokens=20,
                                                    temperature=1.0, cache_prompt=False)
                    )
                )  # fmt: skip

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(one)

        trio.run(main)
    assert together == alone
    for final in finals:
        assert final["timings"]["cache_n"] + final["timings"]["prompt_n"] == 300
