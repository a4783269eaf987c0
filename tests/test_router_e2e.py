"""The router end to end: real router process, real children on tiny GGUFs, openai client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

LONG_STREAM = {"prompt": "go", "max_tokens": 60000, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("three")
    for seed, name in enumerate(("alpha", "beta", "gamma")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed, context_length=65536)
    (folder / "README.txt").write_text("not a model")
    return folder


@pytest.fixture(scope="module")
def router(three_models: Path) -> Iterator[RouterProcess]:
    with running_router(three_models, "--models-max", "2", "-c", "512") as router:
        yield router


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def statuses(router: RouterProcess) -> dict[str, str]:
    data = httpx.get(f"{router.base_url}/models").json()["data"]
    return {entry["id"]: entry["status"]["value"] for entry in data}


def waiting(router: RouterProcess) -> dict[str, int]:
    data = httpx.get(f"{router.base_url}/models").json()["data"]
    return {entry["id"]: entry["waiting"] for entry in data}


def client(router: RouterProcess, api_key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.openai_base_url, api_key=api_key, max_retries=0)


def complete(router: RouterProcess, model: str) -> str:
    return client(router).completions.create(model=model, prompt="hi", max_tokens=2).model


def test_models_lists_every_gguf_with_its_status(router: RouterProcess) -> None:
    data = httpx.get(f"{router.base_url}/v1/models").json()["data"]
    assert sorted(entry["id"] for entry in data) == ["alpha", "beta", "gamma"]
    for entry in data:
        assert entry["object"] == "model"
        assert entry["path"].endswith(f"{entry['id']}.gguf")
        assert entry["status"]["value"] in ("unloaded", "loaded", "loading", "unloading")


def test_request_loads_the_model_it_names(router: RouterProcess) -> None:
    chat = client(router).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.model == "alpha"
    entry = next(
        e for e in httpx.get(f"{router.base_url}/models").json()["data"] if e["id"] == "alpha"
    )
    assert entry["status"]["value"] == "loaded"
    assert "--alias" in entry["status"]["args"]
    assert "alpha" in router.child_pids()


def test_streaming_passes_through(router: RouterProcess) -> None:
    stream = client(router).chat.completions.create(
        model="beta",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_unknown_model_is_a_404_naming_the_known_ones(router: RouterProcess) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(router).completions.create(model="delta", prompt="x")
    message = str(caught.value)
    assert "delta" in message
    assert "alpha" in message


def test_malformed_json_is_a_400(router: RouterProcess) -> None:
    response = httpx.post(
        f"{router.base_url}/v1/chat/completions",
        content=b'{"model": "alpha",',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_request_without_a_model_lists_the_choices(router: RouterProcess) -> None:
    response = httpx.post(f"{router.base_url}/v1/completions", json={"prompt": "x"})
    assert response.status_code == 400
    assert "alpha, beta, gamma" in response.json()["error"]["message"]


def test_child_errors_come_back_unchanged(router: RouterProcess) -> None:
    response = httpx.post(
        f"{router.base_url}/v1/completions",
        json={"model": "alpha", "prompt": "x", "temperature": "warm"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"


def test_router_props_and_model_props(router: RouterProcess) -> None:
    props = httpx.get(f"{router.base_url}/props").json()
    assert props["role"] == "router"
    assert props["max_instances"] == 2
    model_props = httpx.get(f"{router.base_url}/props", params={"model": "alpha"}).json()
    assert model_props["model_alias"] == "alpha"


def test_health_needs_no_model(router: RouterProcess) -> None:
    assert httpx.get(f"{router.base_url}/health").json() == {"status": "ok"}


def test_lru_eviction_keeps_the_recently_used(three_models: Path) -> None:
    with running_router(three_models, "--models-max", "2") as router:
        complete(router, "alpha")
        complete(router, "beta")
        complete(router, "alpha")  # beta is now the least recently used
        complete(router, "gamma")
        wait_until(lambda: statuses(router)["beta"] == "unloaded", "beta is unloaded")
        assert statuses(router) == {"alpha": "loaded", "beta": "unloaded", "gamma": "loaded"}
        assert sorted(router.child_pids()) == ["alpha", "gamma"]


def test_busy_model_is_not_evicted_and_the_waiter_runs_after(three_models: Path) -> None:
    with running_router(three_models, "--models-max", "1") as router:
        answers: list[str] = []
        with httpx.stream(
            "POST",
            f"{router.base_url}/v1/completions",
            json={**LONG_STREAM, "model": "alpha"},
            timeout=60,
        ) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            waiter = threading.Thread(target=lambda: answers.append(complete(router, "beta")))
            waiter.start()
            # Once beta's request is queued, the scheduler has decided: a wrong eviction
            # would show at once.
            wait_until(lambda: waiting(router)["beta"] == 1, "beta's request is queued")
            assert statuses(router) == {"alpha": "loaded", "beta": "unloaded", "gamma": "unloaded"}
            assert answers == []
        waiter.join(60)
        assert answers == ["beta"]
        assert statuses(router)["alpha"] == "unloaded"


def test_concurrent_requests_share_one_load(three_models: Path) -> None:
    with running_router(three_models) as router:
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(complete(router, "gamma")))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == ["gamma"] * 8
        assert router.stderr_text().count("loading model gamma") == 1


def test_a_waiter_that_disconnects_costs_no_model_its_slot(three_models: Path) -> None:
    with running_router(three_models, "--models-max", "1") as router:
        with httpx.stream(
            "POST",
            f"{router.base_url}/v1/completions",
            json={**LONG_STREAM, "model": "alpha"},
            timeout=60,
        ) as busy:
            lines = busy.iter_lines()
            next(lines)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    f"{router.base_url}/v1/completions",
                    json={"model": "beta", "prompt": "x", "max_tokens": 1},
                    timeout=0.5,
                )
            # Before alpha's stream ends: both at once would race for the slot.
            wait_until(lambda: waiting(router)["beta"] == 0, "the waiter has left the queue")
        # alpha went idle after the stream closed; nobody waits for beta any more.
        assert statuses(router) == {"alpha": "loaded", "beta": "unloaded", "gamma": "unloaded"}


def test_load_and_unload_endpoints(three_models: Path) -> None:
    with running_router(three_models) as router:
        assert httpx.post(f"{router.base_url}/models/load", json={"model": "beta"}).json() == {
            "success": True
        }
        wait_until(lambda: statuses(router)["beta"] == "loaded", "beta is loaded")
        httpx.post(f"{router.base_url}/models/unload", json={"model": "beta"})
        wait_until(lambda: statuses(router)["beta"] == "unloaded", "beta is unloaded")
        assert "beta" not in router.child_pids()
        missing = httpx.post(f"{router.base_url}/models/load", json={"model": "nope"})
        assert missing.status_code == 404


def test_autoload_off_refuses_unloaded_models(three_models: Path) -> None:
    with running_router(three_models, "--no-models-autoload") as router:
        refused = httpx.post(
            f"{router.base_url}/v1/completions", json={"model": "alpha", "prompt": "x"}
        )
        assert refused.status_code == 400  # as llama-server's router: "model is not loaded"
        assert "autoload" in refused.json()["error"]["message"]
        allowed = httpx.post(
            f"{router.base_url}/v1/completions?autoload=true",
            json={"model": "alpha", "prompt": "x", "max_tokens": 1},
        )
        assert allowed.status_code == 200


def test_api_key_is_required_except_for_health(three_models: Path) -> None:
    with running_router(three_models, "--api-key", "k1", "--api-key", "k2") as router:
        assert httpx.get(f"{router.base_url}/health").status_code == 200
        refused = httpx.get(f"{router.base_url}/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(router, api_key="k3").models.list()
        assert len(client(router, api_key="k2").models.list().data) == 3
        assert (
            httpx.get(f"{router.base_url}/v1/models", headers={"x-api-key": "k1"}).status_code
            == 200
        )


def test_client_disconnect_cancels_the_childs_generation(router: RouterProcess) -> None:
    with httpx.stream(
        "POST",
        f"{router.base_url}/v1/completions",
        json={**LONG_STREAM, "model": "alpha", "max_tokens": 500},
        timeout=30,
    ) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)

    def slot() -> dict[str, object]:
        slots = httpx.get(f"{router.base_url}/slots", params={"model": "alpha"}).json()
        first: dict[str, object] = slots[0]
        return first

    wait_until(lambda: not slot()["is_processing"], "alpha's slot is idle")
    decoded = slot()["next_token"]["n_decoded"]  # type: ignore[index]
    assert decoded < 500  # with -c 512 the full answer would have been 500 tokens


def test_single_model_needs_no_model_field(tmp_path: Path) -> None:
    write_tiny_llama(tmp_path / "only.gguf")
    with running_router(tmp_path) as router:
        response = httpx.post(
            f"{router.base_url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30
        )
        assert response.json()["model"] == "only"


def test_reload_finds_new_models(tmp_path: Path) -> None:
    write_tiny_llama(tmp_path / "first.gguf")
    with running_router(tmp_path) as router:
        write_tiny_llama(tmp_path / "second.gguf")
        assert sorted(statuses(router)) == ["first"]
        listed = httpx.get(f"{router.base_url}/models", params={"reload": "1"}).json()["data"]
        assert sorted(entry["id"] for entry in listed) == ["first", "second"]


def test_api_keys_from_a_file(three_models: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nsecret-one\n")
    with running_router(three_models, "--api-key-file", str(keys)) as router:
        assert httpx.get(f"{router.base_url}/v1/models").status_code == 401
        assert len(client(router, api_key="secret-one").models.list().data) == 3
