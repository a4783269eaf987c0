"""``POST /models/pin`` and what ``GET /models`` says of each model (``pinned``, ``last_used``,
``memory``) against a real router with one slot and real children on tiny models."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from router.processes.resident import resident_bytes
from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

KEY = "pin-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LOAD_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("pin")
    write_tiny_llama(folder / "alpha.gguf")
    write_tiny_llama(folder / "beta.gguf", seed=1)
    flags = ("--spares", "0", "--models-max", "1", "--slot-timeout", "2", "--api-key", KEY)
    with running_router(folder, *flags) as router:
        yield router


def entry(router: RouterProcess, model: str) -> dict[str, Any]:
    answer = httpx.get(f"{router.base_url}/models", headers=AUTH, timeout=10)
    assert answer.status_code == 200
    found: dict[str, Any] = next(e for e in answer.json()["data"] if e["id"] == model)
    return found


def wait_for(router: RouterProcess, model: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while (found := entry(router, model))["status"]["value"] != status:
        assert time.monotonic() < deadline, f"{model} is still {found['status']}"
        time.sleep(0.05)
    return found


def pin(router: RouterProcess, body: Any, **options: Any) -> httpx.Response:
    headers = {**AUTH, **options.pop("headers", {})}
    return httpx.post(
        f"{router.base_url}/models/pin", json=body, headers=headers, timeout=10, **options
    )


def chat(router: RouterProcess, model: str) -> str:
    client = openai.OpenAI(base_url=f"{router.base_url}/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    return answer.model


def test_an_unloaded_model_has_no_memory_and_no_last_use(router: RouterProcess) -> None:
    beta = entry(router, "beta")
    assert beta["status"]["value"] == "unloaded"
    assert beta["memory"] is None and beta["last_used"] is None and beta["pinned"] is False


def test_pin_takes_json_with_the_key_and_says_what_is_wrong(router: RouterProcess) -> None:
    keyless = httpx.post(f"{router.base_url}/models/pin", json={"model": "alpha", "pinned": True})
    assert keyless.status_code == 401
    form = httpx.post(
        f"{router.base_url}/models/pin", data={"model": "alpha", "pinned": "true"}, headers=AUTH
    )
    assert form.status_code == 415  # no page of another origin can send it unasked
    missing = pin(router, {"model": "alpha"})
    assert missing.status_code == 400
    assert "pinned" in missing.json()["error"]["message"]
    unknown = pin(router, {"model": "nope", "pinned": True})
    assert unknown.status_code == 404
    assert entry(router, "alpha")["pinned"] is False  # none of them pinned it


def test_a_pinned_model_keeps_its_slot_until_unpinned(router: RouterProcess) -> None:
    before = time.time()
    assert chat(router, "alpha")
    alpha = wait_for(router, "alpha", "loaded")
    assert isinstance(alpha["last_used"], float)
    assert before - 1 <= alpha["last_used"] <= time.time() + 1  # Unix seconds, not trio's clock
    # The child's resident memory, in bytes: at least its own process's (Python, llama.cpp).
    assert isinstance(alpha["memory"], int)
    assert alpha["memory"] >= 16 * 2**20
    own = resident_bytes(alpha["status"]["pid"])
    assert own is not None and alpha["memory"] >= own // 2

    pinned = pin(router, {"model": "alpha", "pinned": True})
    assert pinned.status_code == 200
    assert pinned.json() == {"success": True, "model": "alpha", "pinned": True}
    assert entry(router, "alpha")["pinned"] is True
    assert entry(router, "alpha")["settings"]["pinned"] is False  # its file's word, unchanged

    # Every slot is pinned: a request for another model waits for one (--slot-timeout), then
    # gets the router's usual 503, with Retry-After, and the pinned model stays.
    with pytest.raises(openai.APIStatusError) as refused:
        chat(router, "beta")
    assert refused.value.status_code == 503
    assert "no slot freed" in refused.value.message
    assert refused.value.response.headers["Retry-After"].isdigit()
    assert entry(router, "alpha")["status"]["value"] == "loaded"

    unpinned = pin(router, {"model": "alpha", "pinned": False})
    assert unpinned.json()["pinned"] is False
    assert chat(router, "beta")  # now alpha is evicted for it
    assert wait_for(router, "alpha", "unloaded")["memory"] is None
    assert entry(router, "beta")["status"]["value"] == "loaded"
