"""``n`` choices: generations of one prompt that run together, each in a slot; their answer,
their stream and its count of tokens; the admission of several slots at once; and a choice that
fails taking its siblings down with it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

from router.child import responses
from router.child.admission import Admission
from router.child.engine import Finished, FinishReason, GenerationRequest, Piece, TextStream
from router.child.service import ModelService
from router.edge.usage import UsageCounter
from router.errors import QueueFull, RouterError
from tests.processes import ChildProcess, running_child

SLOTS = 4
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "choose"}
]


@pytest.fixture(scope="module")
def four_slots(tiny_model: Path) -> Iterator[ChildProcess]:
    with running_child(
        tiny_model, "--ctx-size", "2048", "--parallel", str(SLOTS), "--alias", "tiny"
    ) as child:
        yield child


@pytest.fixture
def client(four_slots: ChildProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=four_slots.openai_base_url, api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


def _texts(client: openai.OpenAI, n: int, **sampling: Any) -> list[str]:
    completion = client.completions.create(
        model="tiny",
        prompt="pick",
        n=n,
        max_tokens=16,
        extra_body={"ignore_eos": True},
        **sampling,
    )
    assert [choice.index for choice in completion.choices] == list(range(n))
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16 * n
    return [choice.text for choice in completion.choices]


def test_sampled_choices_differ(client: openai.OpenAI) -> None:
    assert len(set(_texts(client, 3, temperature=1.0))) > 1


def test_greedy_choices_are_the_one_greedy_answer(client: openai.OpenAI) -> None:
    alone = _texts(client, 1, temperature=0)
    assert _texts(client, 3, temperature=0) == alone * 3


def test_seeded_choices_differ_and_come_again(client: openai.OpenAI) -> None:
    first = _texts(client, 3, temperature=1.0, seed=11)
    assert len(set(first)) > 1
    assert _texts(client, 3, temperature=1.0, seed=11) == first


def test_usage_counts_the_prompt_once(client: openai.OpenAI) -> None:
    def usage(n: int) -> openai.types.CompletionUsage:
        chat = client.chat.completions.create(
            model="tiny", messages=MESSAGES, n=n, max_tokens=5, extra_body={"ignore_eos": True}
        )
        assert [choice.index for choice in chat.choices] == list(range(n))
        assert all(choice.message.content is not None for choice in chat.choices)
        assert chat.usage is not None
        return chat.usage

    one, three = usage(1), usage(3)
    assert three.prompt_tokens == one.prompt_tokens
    assert three.completion_tokens == 15
    assert three.total_tokens == one.prompt_tokens + 15


def _events(child: ChildProcess, body: dict[str, Any]) -> tuple[list[Any], bytes]:
    """The data of each event of a streamed answer, and its raw bytes."""
    with httpx.stream(
        "POST", f"{child.base_url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        raw = response.read()
    lines = [line for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [line[len("data: ") :] for line in lines], raw


def test_streamed_choices_end_with_a_finish_each_then_usage(four_slots: ChildProcess) -> None:
    body = {
        "messages": MESSAGES,
        "n": 3,
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data, _ = _events(four_slots, body)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    texts = {0: "", 1: "", 2: ""}
    finishes: list[int] = []
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        assert not finishes or choice["finish_reason"], "a piece after a finish"
        if choice["finish_reason"]:
            finishes.append(choice["index"])
        texts[choice["index"]] += choice["delta"].get("content") or ""
    assert finishes == [0, 1, 2]  # the last chunks before usage, one per choice
    assert len(set(texts.values())) == 1  # greedy
    assert usage["completion_tokens"] == 18
    # The last finish chunk counts the whole request, as usage does.
    timings = chunks[-2]["timings"]
    assert timings["predicted_n"] == 18
    assert timings["cache_n"] + timings["prompt_n"] == usage["prompt_tokens"]
    assert [chunk for chunk in chunks[:-2] if "timings" in chunk] == []


def test_the_router_counts_every_choice_of_a_stream(four_slots: ChildProcess) -> None:
    body = {"messages": MESSAGES, "n": 3, "max_tokens": 7, "ignore_eos": True, "stream": True}
    _, raw = _events(four_slots, body)
    counter = UsageCounter()
    counter.begin("text/event-stream")
    counter.feed(raw)
    usage = counter.usage()
    assert usage is not None
    assert usage.completion_tokens == 21
    assert usage.prompt_tokens == 1 + len(
        "<|im_start|>user\nchoose<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(("field", "value"), [("n", SLOTS + 1), ("n_cmpl", SLOTS + 1), ("n", 0)])
def test_more_choices_than_slots_is_a_400(four_slots: ChildProcess, field: str, value: int) -> None:
    response = httpx.post(
        f"{four_slots.base_url}/v1/completions", json={"prompt": "x", field: value}, timeout=60
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    if value > SLOTS:
        assert f"between 1 and {SLOTS}" in error["message"]
        assert "--parallel" in error["message"]


def test_a_client_that_leaves_frees_every_choice_slot(four_slots: ChildProcess) -> None:
    body = {
        "prompt": "long",
        "n": 3,
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{four_slots.base_url}/v1/completions", json=body, timeout=60
    ) as response:
        for _ in response.iter_lines():
            break
    for _ in range(200):
        props = httpx.get(f"{four_slots.base_url}/props", timeout=10).json()
        if props["queue"]["running"] == 0:
            break
        time.sleep(0.05)
    assert props["queue"]["running"] == 0
    assert not any(
        slot["is_processing"] for slot in httpx.get(f"{four_slots.base_url}/slots").json()
    )


# ---- the service and the stream, on an engine that fails on cue --------------------------------


class CueEngine:
    """Generations whose ``max_tokens`` says what they do: 1 fails after one piece, 2 waits
    forever after one piece, 3 gives one piece and ends."""

    capacity = 3

    def __init__(self) -> None:
        self.exits: list[int] = []

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextStream]:
        send, receive = trio.open_memory_channel[Piece | Finished | BaseException](10)
        cue = request.max_tokens
        send.send_nowait(Piece(f"{cue}"))
        if cue == 1:
            send.send_nowait(RouterError("generation failed: on cue"))
        elif cue == 3:
            send.send_nowait(Finished(FinishReason.STOP, prompt_tokens=1, completion_tokens=1))
        try:
            yield TextStream(receive)
        finally:
            assert cue is not None
            self.exits.append(cue)


def _requests(*cues: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt_tokens=[1], max_tokens=cue) for cue in cues]


async def test_a_failed_choice_ends_the_stream_and_cancels_the_others() -> None:
    engine = CueEngine()
    service = ModelService(engine, max_queue=1)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        channel = await service.start_stream(nursery, _requests(2, 1, 3))
        items = [item async for item in channel]
    assert isinstance(items[-1], RouterError)
    assert "on cue" in items[-1].message
    assert sorted(engine.exits) == [1, 2, 3]  # the one that waited forever was cancelled
    assert service.admission.running == 0


async def test_a_failed_choice_fails_the_whole_answer() -> None:
    engine = CueEngine()
    service = ModelService(engine, max_queue=1)  # type: ignore[arg-type]
    with pytest.raises(RouterError, match="on cue"):
        await service.complete(_requests(2, 1))
    assert sorted(engine.exits) == [1, 2]
    assert service.admission.running == 0


async def test_a_stream_that_failed_sends_an_error_event_and_no_done() -> None:
    async def items() -> AsyncIterator[responses.StreamItem]:
        yield 0, Piece("a")
        yield 1, Piece("b")
        yield RouterError("generation failed: on cue")

    ids = responses.ResponseIds(model="tiny", prefix="x")
    events = [
        event
        async for event in responses.sse_events(
            items(), responses.chat_stream(ids), n_choices=2, include_usage=True
        )
    ]
    assert b"on cue" in events[-1]
    assert responses.SSE_DONE not in events
    assert sum(b'"role":"assistant"' in event for event in events) == 2


# ---- admission of several slots at once --------------------------------------------------------


async def test_slots_are_taken_together_in_arrival_order() -> None:
    admission = Admission(capacity=2, max_waiting=10)
    order: list[str] = []
    release = trio.Event()

    async def request(name: str, count: int) -> None:
        async with admission.slots(count):
            order.append(name)
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "one", 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(request, "both", 2)  # waits for the two
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(request, "later", 1)  # a slot is free, but "both" is first in line
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["one"]
        assert (admission.running, admission.waiting) == (1, 2)
        release.set()
    assert order == ["one", "both", "later"]
    assert (admission.running, admission.waiting) == (0, 0)


async def test_requests_for_every_slot_never_hold_each_other_up() -> None:
    admission = Admission(capacity=3, max_waiting=10)
    served: list[int] = []

    async def request(number: int) -> None:
        async with admission.slots(3):
            served.append(number)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for number in range(4):
            nursery.start_soon(request, number)
    assert sorted(served) == [0, 1, 2, 3]


async def test_a_big_waiter_that_leaves_lets_the_small_ones_in() -> None:
    admission = Admission(capacity=2, max_waiting=10)
    release = trio.Event()
    served: list[str] = []

    async def hold() -> None:
        async with admission.slot():
            await release.wait()

    async def serve(name: str, count: int, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with admission.slots(count):
                served.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        big = await nursery.start(serve, "big", 2)
        await nursery.start(serve, "small", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert served == [] and admission.waiting == 2
        big.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert served == ["small"]
        release.set()
    assert (admission.running, admission.waiting) == (0, 0)


async def test_a_full_queue_refuses_a_request_for_several_slots() -> None:
    admission = Admission(capacity=2, max_waiting=0)
    async with admission.slot():
        with pytest.raises(QueueFull):
            async with admission.slots(2):
                pass
    with pytest.raises(ValueError):
        async with admission.slots(3):
            pass
