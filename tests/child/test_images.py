"""Image parts: a folder's ``mmproj*.gguf`` reaches the child as ``--mmproj``, the child loads
it (llama.cpp's mtmd) and reads ``image_url`` parts holding data URLs, each image counted in
the prompt's tokens. A model without a projector, a remote URL, a malformed data URL and an
audio part are 400s that say why, which the openai client does not retry (it would a 5xx)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.model_options import parse_child_arguments
from router.processes.own_children import own_child_argv
from router.spec import ModelSpec
from tests.processes import run_child_to_exit, running_router
from tests.tiny_models import write_tiny_llama
from tests.tiny_vision_model import IMAGE_TOKENS, tiny_png, write_tiny_mmproj

PNG_URL = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
QUESTION = "what is this?"


def test_a_folders_projector_is_passed_to_the_child(tmp_path: Path) -> None:
    spec = ModelSpec(id="vision", path=tmp_path / "m.gguf", mmproj=tmp_path / "mmproj-F16.gguf")
    argv = own_child_argv(spec, tmp_path / "s.sock", {}, [])
    at = argv.index("--mmproj")
    assert argv[at + 1] == str(tmp_path / "mmproj-F16.gguf")
    engine, _ = parse_child_arguments(argv[argv.index("child") + 1 :])
    assert engine.mmproj == tmp_path / "mmproj-F16.gguf"
    plain = own_child_argv(ModelSpec(id="plain", path=tmp_path / "m.gguf"), tmp_path / "s", {}, [])
    assert "--mmproj" not in plain


def test_a_projector_made_for_another_model_is_a_load_failure_that_says_why(
    tmp_path: Path,
) -> None:
    model = write_tiny_llama(tmp_path / "model.gguf")
    projector = write_tiny_mmproj(tmp_path / "mmproj.gguf", text_n_embd=32)
    code, stderr = run_child_to_exit(model, "--mmproj", str(projector))
    assert code == 1
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors and "could not load the projector" in errors[-1]
    assert "mismatch between text model (n_embd = 64) and mmproj (n_embd = 32)" in errors[-1]


def _with_image(url: str = PNG_URL) -> list[Any]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def test_an_image_is_read_and_counted_in_the_prompt_tokens(client: openai.OpenAI) -> None:
    text_only = client.chat.completions.create(
        model="vision",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=3,
        temperature=0,
    )
    answer = client.chat.completions.create(
        model="vision", messages=_with_image(), max_tokens=3, temperature=0
    )
    assert answer.choices[0].message.content is not None
    assert answer.usage is not None and text_only.usage is not None
    # The image's marker is replaced by its embeddings: the text around it is the same.
    assert answer.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS
    assert answer.usage.completion_tokens >= 1
    # The same image again gives the same answer: nothing of the first one's cache leaks in.
    again = client.chat.completions.create(
        model="vision", messages=_with_image(), max_tokens=3, temperature=0
    )
    assert again.choices[0].message.content == answer.choices[0].message.content


def test_an_image_is_read_in_a_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="vision",
        messages=_with_image(),
        max_tokens=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens >= 1
    assert usage[0].prompt_tokens > IMAGE_TOKENS
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)


def test_an_image_prefill_leaves_a_running_generation_intact(client: openai.OpenAI) -> None:
    """An image is evaluated between two steps of another slot's generation, in its own
    sequence: that generation's text is what it is alone."""
    text = [{"role": "user", "content": "count"}]
    # Long enough that the image request arrives while it runs (ignore_eos: all 300 tokens).
    long: dict[str, Any] = {"max_tokens": 300, "temperature": 0, "extra_body": {"ignore_eos": True}}
    alone = client.chat.completions.create(model="vision", messages=text, **long)
    stream = client.chat.completions.create(model="vision", messages=text, stream=True, **long)
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 1:  # the other generation is running: now an image prompt
                answer = client.chat.completions.create(
                    model="vision", messages=_with_image(), max_tokens=3, temperature=0
                )
                assert answer.usage is not None
    assert "".join(pieces) == alone.choices[0].message.content


def test_input_tokens_count_the_image_as_a_generation_does(
    client: openai.OpenAI, router_url: str
) -> None:
    answer = client.chat.completions.create(model="vision", messages=_with_image(), max_tokens=1)
    counted = httpx.post(
        f"{router_url}/v1/chat/completions/input_tokens",
        json={"model": "vision", "messages": _with_image()},
        timeout=30,
    )
    assert counted.status_code == 200, counted.text
    assert answer.usage is not None
    assert counted.json()["input_tokens"] == answer.usage.prompt_tokens


def test_choices_of_one_image_prompt_each_read_it(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="vision", messages=_with_image(), max_tokens=3, n=2, temperature=0
    )
    assert len(answer.choices) == 2
    # Greedy decoding of the same prompt: each choice evaluated the image the same way.
    assert answer.choices[0].message.content == answer.choices[1].message.content


def test_the_responses_api_reads_an_input_image(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="vision",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": QUESTION},
                    {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                ],
            }
        ],
        max_output_tokens=3,
    )
    assert response.usage is not None
    assert response.usage.input_tokens > IMAGE_TOKENS


def test_the_projector_shows_in_props(router_url: str) -> None:
    props = httpx.get(f"{router_url}/props", params={"model": "vision"}, timeout=30).json()
    assert props["modalities"]["vision"] is True


def test_an_image_for_a_model_without_a_projector_is_a_400_naming_it(
    client: openai.OpenAI,
) -> None:
    body = _bad_request(client, "plain", _with_image())
    assert body["type"] == "not_supported_error"
    assert "mmproj" in body["message"] and "messages[0].content[1]" in body["message"]
    # The model serves text all the same.
    answer = client.chat.completions.create(
        model="plain", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.choices[0].message.content is not None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://example.com/cat.png", "does not fetch"),
        ("data:image/png;base64,!!not base64!!", "invalid base64"),
        ("data:image/png," + "x" * 8, "base64 data: URL"),
        ("data:text/plain;base64,aGVsbG8=", "not of an image"),
        ("data:image/png;base64," + base64.b64encode(b"not a png at all").decode(), "decode"),
    ],
)
def test_an_image_url_that_cannot_be_read_is_a_400_that_says_why(
    client: openai.OpenAI, url: str, says: str
) -> None:
    body = _bad_request(client, "vision", _with_image(url))
    assert says in body["message"]
    assert "messages[0].content[1].image_url.url" in body["message"]


def test_an_audio_part_is_a_400(client: openai.OpenAI) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]
    body = _bad_request(client, "vision", messages)
    assert body["type"] == "not_supported_error"
    assert "audio" in body["message"] and "messages[0].content[1]" in body["message"]


def _bad_request(client: openai.OpenAI, model: str, messages: list[Any]) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    return body


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: ``vision/`` (a tiny llama and a projector made for it) and ``plain``."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "vision").mkdir()
    write_tiny_llama(folder / "vision" / "model.gguf")
    write_tiny_mmproj(folder / "vision" / "mmproj-F32.gguf")
    write_tiny_llama(folder / "plain.gguf", seed=1)
    return folder


@pytest.fixture(scope="module")
def router_url(models: Path) -> Iterator[str]:
    with running_router(models, "--parallel", "2") as router:
        yield router.base_url


@pytest.fixture
def client(router_url: str) -> openai.OpenAI:
    # Retries allowed: a 400 must come back at once all the same (a 5xx would be retried).
    return openai.OpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=2)
