"""Long prompts cannot take a child hostage.

A prompt with more bytes than the context could hold whatever its tokens is refused before it
is tokenized (llama.cpp took 31 s on a 17 MB prompt for Gemma); one that might fit is tokenized
on a worker thread, so the child answers others meanwhile and a client that gives up frees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import ChildProcess, running_child
from tests.tiny_models import write_tiny_llama

WAIT_S = 30  # the bound of every wait; nothing here should come near it
N_CTX = 512  # shared_child's --ctx-size
TINY_MAX_TOKEN_BYTES = 6  # "<0x00>": the text of a byte token is the tiny vocabulary's longest
MEGABYTES = 4_000_000


def _client(child: ChildProcess, timeout_s: float = WAIT_S) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=child.openai_base_url, api_key="x", max_retries=0, timeout=timeout_s
    )


def _assert_refused_for_its_size(error: openai.APIStatusError, field: str) -> None:
    assert error.status_code == 400
    assert isinstance(error.body, dict)
    assert error.body["param"] == field
    message = error.body["message"]
    assert message.startswith(f"'{field}' is "), message
    assert "bytes long" in message
    assert f"{N_CTX * TINY_MAX_TOKEN_BYTES} bytes at most" in message  # the bound, stated
    assert "--ctx-size" in message  # and what to do


def _assert_still_serves(child: ChildProcess) -> None:
    assert httpx.get(f"{child.base_url}/health", timeout=WAIT_S).status_code == 200
    answer = _client(child).completions.create(model="tiny", prompt="ok", max_tokens=2)
    assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("as_list", [False, True], ids=["string", "list of one string"])
def test_a_prompt_of_megabytes_is_refused_before_it_is_tokenized(
    shared_child: ChildProcess, as_list: bool
) -> None:
    prompt = "y" * MEGABYTES
    with pytest.raises(openai.BadRequestError) as caught:
        _client(shared_child).completions.create(
            model="tiny", prompt=[prompt] if as_list else prompt, max_tokens=1
        )
    _assert_refused_for_its_size(caught.value, "prompt")
    assert f"'prompt' is {MEGABYTES} bytes long" in str(caught.value)
    _assert_still_serves(shared_child)


def test_a_chat_of_megabytes_is_refused_before_it_is_tokenized(shared_child: ChildProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _client(shared_child).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "y" * MEGABYTES}], max_tokens=1
        )
    _assert_refused_for_its_size(caught.value, "messages")  # the prompt its template made
    _assert_still_serves(shared_child)


def test_tokenize_refuses_megabytes_before_tokenizing(shared_child: ChildProcess) -> None:
    response = httpx.post(
        f"{shared_child.base_url}/tokenize", json={"content": "y" * MEGABYTES}, timeout=WAIT_S
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "content"
    assert f"'content' is {MEGABYTES} bytes long" in error["message"]
    _assert_still_serves(shared_child)


def test_a_prompt_at_the_bound_is_tokenized_and_judged_by_its_tokens(
    shared_child: ChildProcess,
) -> None:
    at_the_bound = "y" * (N_CTX * TINY_MAX_TOKEN_BYTES)
    with pytest.raises(openai.BadRequestError) as caught:
        _client(shared_child).completions.create(model="tiny", prompt=at_the_bound, max_tokens=1)
    # one token per byte, plus BOS: the exact count, so it was tokenized
    assert f"'prompt' is {len(at_the_bound) + 1} tokens long" in str(caught.value)


def test_a_token_list_longer_than_the_context_is_refused_by_its_length(
    shared_child: ChildProcess,
) -> None:
    too_many = [5] * N_CTX + [10**9]  # its last id is not even in the vocabulary
    with pytest.raises(openai.BadRequestError) as caught:
        _client(shared_child).completions.create(model="tiny", prompt=too_many, max_tokens=1)
    assert f"'prompt' is {len(too_many)} tokens long" in str(caught.value)


def test_embeddings_refuse_an_input_of_megabytes_before_tokenizing(tiny_model: Path) -> None:
    with running_child(
        tiny_model, "--embeddings", "--ctx-size", str(N_CTX), "--alias", "tiny"
    ) as child:
        with pytest.raises(openai.BadRequestError) as caught:
            _client(child).embeddings.create(model="tiny", input=["ok", "y" * MEGABYTES])
        _assert_refused_for_its_size(caught.value, "input[1]")
        with pytest.raises(openai.BadRequestError) as caught:
            _client(child).embeddings.create(model="tiny", input=[[5] * (N_CTX + 1)])
        assert f"'input[0]' is {N_CTX + 1} tokens long" in str(caught.value)
        vectors = _client(child).embeddings.create(model="tiny", input="ok")
        assert len(vectors.data) == 1


# ---- a long tokenization that might fit -------------------------------------------------------

# llama.cpp looks for each special token of the vocabulary, one after the other, at every "<" of
# the prompt: with 16000 of them, 400 kB of "<" take tens of seconds to tokenize, while the
# longest token (33 bytes) lets up to 16384 * 33 = 540 kB fit a 16384-token context.
MANY_SPECIAL_TOKENS = [f"<|reserved_special_token_{index:06d}|>" for index in range(16000)]
SLOW_PROMPT = "<" * 400_000


@pytest.fixture(scope="module")
def slow_tokenizer_child(models_dir: Path) -> Iterator[ChildProcess]:
    model = write_tiny_llama(models_dir / "many-specials.gguf", special_tokens=MANY_SPECIAL_TOKENS)
    with running_child(model, "--ctx-size", "16384", "--alias", "tiny") as child:
        yield child


def test_clients_that_leave_during_long_tokenizations_free_the_child(
    slow_tokenizer_child: ChildProcess,
) -> None:
    impatient = _client(slow_tokenizer_child, timeout_s=2)
    for _ in range(2):  # as many as the one slot, plus one: all places for large work taken
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(model="tiny", prompt=SLOW_PROMPT, max_tokens=1)
    # Their tokenizations go on in the background, but neither the event loop nor the slot
    # waits for them: the next client is served at once.
    _assert_still_serves(slow_tokenizer_child)
