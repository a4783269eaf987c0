"""``GET /metrics``: the router's own Prometheus metrics, from a real router and real children
on tiny models; ``?model=`` forwards to the child (llama-server's names)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("metered")
    for seed, name in enumerate(("alpha", "beta")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed)
    return folder


@pytest.fixture(scope="module")
def router(two_models: Path) -> Iterator[RouterProcess]:
    with running_router(two_models, "--models-max", "1", "--spares", "0", "-c", "256") as router:
        yield router


def scrape(router: RouterProcess) -> list[Sample]:
    response = httpx.get(f"{router.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def scrape_once(router: RouterProcess, name: str, at_least: float, **labels: str) -> list[Sample]:
    """A scrape in which ``name`` has reached ``at_least``: a request is counted just after
    its answer's last byte has left, so a scrape sent at once may come a moment before."""
    found: list[list[Sample]] = []

    def reached() -> bool:
        found[:] = [scrape(router)]
        return value(found[0], name, **labels) >= at_least

    wait_for(reached, f"{name} {labels} reaches {at_least}")
    return found[0]


def complete(router: RouterProcess, model: str) -> None:
    client = openai.OpenAI(base_url=router.openai_base_url, api_key="none", max_retries=0)
    client.completions.create(model=model, prompt="hi", max_tokens=3)


def test_requests_tokens_and_the_load_are_counted(router: RouterProcess) -> None:
    before = scrape(router)
    requests = "llama_router_requests_total"
    ok = {"model": "alpha", "route": "/v1/completions", "status_class": "2xx"}
    for _ in range(3):
        complete(router, "alpha")
    after = scrape_once(router, requests, value(before, requests, **ok) + 3, **ok)
    assert value(after, requests, **ok) - value(before, requests, **ok) == 3
    for tokens in ("llama_router_prompt_tokens_total", "llama_router_completion_tokens_total"):
        assert value(after, tokens, model="alpha") > value(before, tokens, model="alpha")
    assert value(after, "llama_router_model_loads_total", model="alpha") >= 1
    load_count = "llama_router_model_load_duration_seconds_count"
    assert value(after, load_count, model="alpha") >= 1
    assert value(after, "llama_router_model_load_duration_seconds_sum", model="alpha") > 0
    duration_count = "llama_router_request_duration_seconds_count"
    assert (
        value(after, duration_count, model="alpha") - value(before, duration_count, model="alpha")
        == 3
    )


def test_histogram_buckets_parse_and_add_up(router: RouterProcess) -> None:
    complete(router, "alpha")
    samples = scrape_once(router, "llama_router_queue_wait_seconds_count", 1, model="alpha")
    for histogram in (
        "llama_router_request_duration_seconds",
        "llama_router_router_latency_seconds",
        "llama_router_queue_wait_seconds",
    ):
        buckets = [
            s for s in samples if s.name == f"{histogram}_bucket" and s.labels["model"] == "alpha"
        ]
        counts = [s.value for s in sorted(buckets, key=lambda s: float(s.labels["le"]))]
        assert counts == sorted(counts), histogram  # cumulative
        assert buckets[-1].labels["le"] == "+Inf"
        assert counts[-1] == value(samples, f"{histogram}_count", model="alpha") > 0


def test_an_eviction_is_counted_with_its_reason(router: RouterProcess) -> None:
    complete(router, "alpha")
    before = scrape(router)
    complete(router, "beta")  # --models-max 1: alpha makes room
    requests = "llama_router_requests_total"
    after = scrape_once(router, requests, value(before, requests, model="beta") + 1, model="beta")
    unloads = "llama_router_model_unloads_total"
    evicted = {"model": "alpha", "reason": "evicted"}
    assert value(after, unloads, **evicted) - value(before, unloads, **evicted) == 1
    waits = "llama_router_request_waits_total"
    for kind in ("load", "slot"):
        assert value(after, waits, model="beta", **{"for": kind}) > value(
            before, waits, model="beta", **{"for": kind}
        )


def test_a_killed_child_is_counted_as_a_crash(router: RouterProcess) -> None:
    complete(router, "beta")
    samples = scrape(router)
    before = value(samples, "llama_router_model_crashes_total", model="beta")
    restarts = value(samples, "llama_router_model_restarts_total", model="beta")
    os.kill(router.child_pids()["beta"], signal.SIGKILL)
    wait_for(
        lambda: value(scrape(router), "llama_router_model_crashes_total", model="beta") > before,
        "the crash is counted",
    )
    complete(router, "beta")  # the next request restarts it
    assert value(scrape(router), "llama_router_model_restarts_total", model="beta") > restarts


def test_made_up_model_names_add_no_labels(router: RouterProcess) -> None:
    before = scrape(router)
    for name in ("made-up-1", "made-up-2"):
        response = httpx.post(
            f"{router.base_url}/v1/completions", json={"model": name, "prompt": "x"}
        )
        assert response.status_code == 404
    errors = "llama_router_request_errors_total"
    not_found = {"model": "", "type": "not_found_error"}
    after = scrape_once(router, errors, value(before, errors, **not_found) + 2, **not_found)
    assert not any("made-up" in str(sample.labels) for sample in after)
    assert value(after, errors, **not_found) - value(before, errors, **not_found) == 2


def test_queue_and_process_gauges_are_there(router: RouterProcess) -> None:
    samples = scrape(router)
    models = {s.labels["model"] for s in samples if s.name == "llama_router_queue_length"}
    assert models == {"alpha", "beta"}
    assert value(samples, "llama_router_process_resident_memory_bytes") > 0
    assert value(samples, "llama_router_process_cpu_seconds_total") > 0


def test_metrics_of_a_model_are_its_childs(router: RouterProcess) -> None:
    response = httpx.get(f"{router.base_url}/metrics", params={"model": "alpha"}, timeout=30)
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert any(name.startswith("llamacpp:") for name in names)
    assert not any(name.startswith("llama_router_") for name in names)


def test_metrics_need_the_key(two_models: Path) -> None:
    with running_router(two_models, "--api-key", "sesame", "--spares", "0") as router:
        refused = httpx.get(f"{router.base_url}/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        allowed = httpx.get(
            f"{router.base_url}/metrics", headers={"Authorization": "Bearer sesame"}
        )
        assert allowed.status_code == 200
        assert "llama_router_requests_total" in allowed.text


def test_the_quart_path_is_counted_too(router: RouterProcess) -> None:
    """A chunked body goes through Quart, whose forward runs in a task of its own."""
    complete(router, "alpha")
    before = scrape(router)
    body = json.dumps(
        {"model": "alpha", "prompt": "hi", "max_tokens": 4, "stream": True, "ignore_eos": True}
    ).encode()
    with httpx.stream(
        "POST", f"{router.base_url}/v1/completions", content=iter([body]), timeout=30
    ) as response:
        assert response.status_code == 200
        assert "chunked" in response.request.headers.get("transfer-encoding", "")
        assert b"[DONE]" in response.read()
    ok = {"model": "alpha", "route": "/v1/completions", "status_class": "2xx"}
    requests = "llama_router_requests_total"
    after = scrape_once(router, requests, value(before, requests, **ok) + 1, **ok)
    assert value(after, requests, **ok) - value(before, requests, **ok) == 1
    tokens = "llama_router_completion_tokens_total"
    assert value(after, tokens, model="alpha") - value(before, tokens, model="alpha") == 4
