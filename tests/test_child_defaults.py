"""``--temp`` and ``-n`` are the children's defaults for requests that do not set them, as
llama-server's command line sets its default sampling parameters."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from router.child.parsing import RequestDefaults, parse_chat, parse_completion
from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama


def test_a_request_that_sets_nothing_gets_the_defaults() -> None:
    defaults = RequestDefaults(temperature=0.0, max_tokens=3)
    settings = parse_completion({"prompt": "x"}, defaults=defaults).settings
    assert (settings.sampling.temperature, settings.max_tokens) == (0.0, 3)
    chat = parse_chat({"messages": [{"role": "user", "content": "x"}]}, defaults=defaults)
    assert (chat.settings.sampling.temperature, chat.settings.max_tokens) == (0.0, 3)


def test_a_request_that_sets_them_wins() -> None:
    defaults = RequestDefaults(temperature=0.0, max_tokens=3)
    body = {"prompt": "x", "temperature": 1.5, "max_tokens": 7}
    settings = parse_completion(body, defaults=defaults).settings
    assert (settings.sampling.temperature, settings.max_tokens) == (1.5, 7)
    unlimited = parse_completion({"prompt": "x", "n_predict": -1}, defaults=defaults)
    assert unlimited.settings.max_tokens is None


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("defaults")
    write_tiny_llama(folder / "tiny.gguf")
    with running_router(folder, "--temp", "0", "-n", "3", "-c", "256") as router:
        yield router


def test_router_flags_reach_the_children(router: RouterProcess) -> None:
    client = openai.OpenAI(base_url=router.openai_base_url, api_key="none", max_retries=0)
    answers = [
        client.completions.create(model="tiny", prompt="hello", extra_body={"ignore_eos": True})
        for _ in range(2)
    ]
    assert [answer.usage.completion_tokens for answer in answers if answer.usage] == [3, 3]
    assert answers[0].choices[0].text == answers[1].choices[0].text  # greedy: --temp 0
    props = httpx.get(f"{router.base_url}/props", params={"model": "tiny"}).json()
    params = props["default_generation_settings"]["params"]
    assert (params["temperature"], params["n_predict"]) == (0.0, 3)
