"""``/apply-template`` and the ``input_tokens`` routes, through a real router and child: the
prompt a chat request makes, and the tokens its generation counts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

MESSAGES = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "Hi there"},
]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("prompt")
    write_tiny_llama(folder / "tiny.gguf")
    with running_router(folder, "-c", "512") as router:
        yield router


def test_apply_template_answers_the_chat_templates_prompt(router: RouterProcess) -> None:
    answer = httpx.post(
        f"{router.base_url}/apply-template",
        json={"model": "tiny", "messages": MESSAGES},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "prompt": "<|im_start|>system\nYou are a test.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    }


@pytest.mark.parametrize(
    "path", ["/chat/completions/input_tokens", "/v1/chat/completions/input_tokens"]
)
def test_input_tokens_is_the_prompt_tokens_a_chat_completion_reports(
    router: RouterProcess, path: str
) -> None:
    with openai.OpenAI(base_url=router.openai_base_url, api_key="x", max_retries=0) as client:
        chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None
    answer = httpx.post(
        f"{router.base_url}{path}", json={"model": "tiny", "messages": MESSAGES}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "object": "response.input_tokens",
        "input_tokens": chat.usage.prompt_tokens,
    }


def test_apply_template_names_a_bad_message(router: RouterProcess) -> None:
    answer = httpx.post(
        f"{router.base_url}/apply-template",
        json={"model": "tiny", "messages": [{"content": "no role"}]},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "messages[0].role" in answer.json()["error"]["message"]
