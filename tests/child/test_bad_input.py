"""Every client mistake gets a 4xx with an OpenAI error body that names what is wrong."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.processes import ChildProcess


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_malformed_json_is_a_400_that_says_where(shared_child: ChildProcess) -> None:
    response = httpx.post(
        f"{shared_child.base_url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"Content-Type": "application/json"},
    )
    error = _error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in str(error["message"])
    assert "column" in str(error["message"])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "top_p": 2}, "top_p"),
        ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
        ("/v1/completions", {"prompt": "x", "grammar": "root ::= ("}, "grammar"),
        ("/v1/completions", {"prompt": "x", "grammar": 5}, "grammar"),
        ("/v1/completions", {"prompt": "x", "json_schema": {"type": "nonsense"}}, "json_schema"),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": {"text": "x"}}, "prompt"),
        ("/v1/completions", {"prompt": [1, 99999]}, "prompt"),
        ("/v1/completions", {}, "prompt"),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages[0].role"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
        ("/tokenize", {"content": 5}, "content"),
        ("/detokenize", {"tokens": ["a"]}, "tokens"),
        ("/detokenize", {"tokens": [100000]}, "tokens"),
    ],
)
def test_wrong_field_is_a_400_naming_the_field(
    shared_child: ChildProcess, path: str, body: dict[str, object], field: str
) -> None:
    error = _error(httpx.post(f"{shared_child.base_url}{path}", json=body), 400)
    assert error["param"] == field
    assert f"'{field}'" in str(error["message"])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", b'{"prompt": "a\\ud800b", "max_tokens": 1}', "prompt"),
        ("/tokenize", b'{"content": "a\\udfffb"}', "content"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "a\\ud800"}], "max_tokens": 1}',
            "messages",
        ),
        (
            "/v1/completions",
            b'{"prompt": "a", "grammar": "root ::= \\"\\ud800\\"", "max_tokens": 1}',
            "grammar",
        ),
    ],
)
def test_a_lone_surrogate_is_a_400_not_a_500(
    shared_child: ChildProcess, path: str, body: bytes, field: str
) -> None:
    """JSON may escape half of a UTF-16 pair (``"\\ud800"``); that is not text to tokenize."""
    response = httpx.post(
        f"{shared_child.base_url}{path}",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    error = _error(response, 400)
    assert error["param"] == field
    assert "surrogate" in str(error["message"])


def test_body_that_is_not_an_object_is_a_400(shared_child: ChildProcess) -> None:
    error = _error(httpx.post(f"{shared_child.base_url}/v1/completions", json=[1, 2]), 400)
    assert "JSON object" in str(error["message"])


def test_prompt_longer_than_the_context_is_a_400(shared_child: ChildProcess) -> None:
    client = openai.OpenAI(base_url=shared_child.openai_base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="y" * 600)
    assert caught.value.status_code == 400
    message = str(caught.value)
    assert "'prompt'" in message
    assert "512" in message  # the context size, so the user knows the limit


def test_image_content_is_refused_clearly(shared_child: ChildProcess) -> None:
    response = httpx.post(
        f"{shared_child.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    )
    error = _error(response, 400)
    assert "image_url" in str(error["message"])


def test_a_feature_the_model_lacks_is_a_400_the_openai_client_does_not_retry(
    shared_child: ChildProcess,
) -> None:
    """A 5xx (501 included) is retried by the openai client, in vain; a 400 is not."""
    client = openai.OpenAI(base_url=shared_child.openai_base_url, api_key="x", max_retries=2)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input="x")
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "not_supported_error"
    assert "--embeddings" in body["message"]


@pytest.mark.parametrize(
    "constraint",
    [{"json_schema": {"type": "integer"}}, {"response_format": {"type": "json_object"}}],
)
def test_ignore_eos_with_a_json_schema_is_a_400_not_a_crash(
    shared_child: ChildProcess, constraint: dict[str, object]
) -> None:
    """A complete JSON value lets only end-of-generation out; banned, nothing is left, and
    llama.cpp aborted the process."""
    response = httpx.post(
        f"{shared_child.base_url}/v1/completions",
        json={"prompt": "x", "ignore_eos": True, "max_tokens": 5, **constraint},
        timeout=60,
    )
    error = _error(response, 400)
    assert error["param"] == "ignore_eos"
    assert next(iter(constraint)) in str(error["message"])
    assert httpx.get(f"{shared_child.base_url}/health").status_code == 200


def test_embeddings_without_the_flag_say_how_to_enable_them(shared_child: ChildProcess) -> None:
    error = _error(httpx.post(f"{shared_child.base_url}/v1/embeddings", json={"input": "x"}), 400)
    assert "--embeddings" in str(error["message"])


def test_unknown_route_is_an_openai_404(shared_child: ChildProcess) -> None:
    error = _error(httpx.get(f"{shared_child.base_url}/v1/nothing-here"), 404)
    assert error["type"] == "not_found_error"


def test_wrong_method_is_a_405(shared_child: ChildProcess) -> None:
    _error(httpx.get(f"{shared_child.base_url}/v1/completions"), 405)


def test_the_child_still_serves_after_bad_requests(shared_child: ChildProcess) -> None:
    httpx.post(f"{shared_child.base_url}/v1/completions", content=b"\xff\xfe")
    response = httpx.post(
        f"{shared_child.base_url}/v1/completions", json={"prompt": "ok", "max_tokens": 1}
    )
    assert response.status_code == 200
