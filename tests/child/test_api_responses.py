"""OpenAI's Responses API, through a real router and child, with the official openai client:
the same prompt and the same greedy text as the chat route gives."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

MESSAGES = [
    {"role": "system", "content": "Book"},
    {"role": "user", "content": "What is the best book"},
]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("responses")
    write_tiny_llama(folder / "tiny.gguf")
    with running_router(folder, "-c", "512") as router:
        yield router


@pytest.fixture
def client(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=router.openai_base_url, api_key="x", max_retries=0) as client:
        yield client


def chat_reply(client: openai.OpenAI, max_tokens: int) -> tuple[str, int, int]:
    """The greedy chat answer to MESSAGES: text, prompt tokens, completion tokens."""
    chat = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=max_tokens, temperature=0
    )
    assert chat.usage is not None
    text = chat.choices[0].message.content or ""
    return text, chat.usage.prompt_tokens, chat.usage.completion_tokens


def test_a_response_is_the_chat_answer_to_its_instructions_and_input(
    client: openai.OpenAI,
) -> None:
    text, prompt_tokens, completion_tokens = chat_reply(client, 8)
    response = client.responses.create(
        model="tiny",
        instructions="Book",
        input="What is the best book",
        max_output_tokens=8,
        temperature=0,
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output[0].id.startswith("msg_")
    assert response.output_text == text
    assert response.usage is not None
    assert response.usage.input_tokens == prompt_tokens
    assert response.usage.output_tokens == completion_tokens
    assert response.usage.total_tokens == prompt_tokens + completion_tokens


def test_input_items_make_the_same_prompt_as_chat_messages(client: openai.OpenAI) -> None:
    text, prompt_tokens, _ = chat_reply(client, 6)
    response = client.responses.create(
        model="tiny",
        input=[
            {"role": "system", "content": "Book"},
            {"role": "user", "content": [{"type": "input_text", "text": "What is the best book"}]},
        ],
        max_output_tokens=6,
        temperature=0,
    )
    assert response.output_text == text
    assert response.usage is not None
    assert response.usage.input_tokens == prompt_tokens


def test_a_streamed_response_sends_openais_event_sequence(client: openai.OpenAI) -> None:
    text, prompt_tokens, completion_tokens = chat_reply(client, 8)
    stream = client.responses.create(
        model="tiny", input=MESSAGES, max_output_tokens=8, temperature=0, stream=True
    )
    events = list(stream)
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    response_id = events[0].response.id  # type: ignore[union-attr]
    message_id = events[2].item.id  # type: ignore[union-attr]
    assert response_id.startswith("resp_")
    assert message_id.startswith("msg_")
    gathered = "".join(
        event.delta for event in events if event.type == "response.output_text.delta"
    )
    assert gathered == text
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.id == response_id
    assert done.response.output[0].id == message_id
    assert done.response.output_text == text
    assert done.response.usage is not None
    assert done.response.usage.input_tokens == prompt_tokens
    assert done.response.usage.output_tokens == completion_tokens


def test_the_stream_helper_gathers_the_final_response(client: openai.OpenAI) -> None:
    text, _, _ = chat_reply(client, 8)
    with client.responses.stream(
        model="tiny", input=MESSAGES, max_output_tokens=8, temperature=0
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == text


@pytest.mark.parametrize("path", ["/v1/responses/input_tokens", "/responses/input_tokens"])
def test_input_tokens_counts_the_prompt_a_response_would_run(
    client: openai.OpenAI, router: RouterProcess, path: str
) -> None:
    _, prompt_tokens, _ = chat_reply(client, 1)
    answer = httpx.post(
        f"{router.base_url}{path}", json={"model": "tiny", "input": MESSAGES}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"object": "response.input_tokens", "input_tokens": prompt_tokens}


def test_the_path_without_v1_answers_too(router: RouterProcess) -> None:
    answer = httpx.post(
        f"{router.base_url}/responses",
        json={"model": "tiny", "input": "hi", "max_output_tokens": 2},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "response"


def test_previous_response_id_is_refused_with_a_reason(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="hi", previous_response_id="resp_123")
    assert "previous_response_id" in caught.value.message
    assert "whole conversation" in caught.value.message


def test_an_unknown_input_item_is_named(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="tiny",
            input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
        )
    assert "input[0].content[0].type" in caught.value.message


def test_a_response_for_an_unknown_model_is_openais_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="nope", input="hi")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "not_found_error"  # the openai client unwraps "error"
