"""``/metrics`` of a real child: llama-server's names, types and text format, counters that
grow by what a request cost, throughput gauges over the time since the previous scrape."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from router.child.engine import EngineMetrics
from router.child.metrics import MetricsPage, QueueState
from tests.processes import ChildProcess

# llama-server's /metrics (tools/server/server-task.cpp, to_metrics): name and type.
LLAMA_SERVER_METRICS = {
    "llamacpp:prompt_tokens_total": "counter",
    "llamacpp:prompt_tokens_cached_total": "counter",
    "llamacpp:prompt_seconds_total": "counter",
    "llamacpp:tokens_predicted_total": "counter",
    "llamacpp:tokens_predicted_seconds_total": "counter",
    "llamacpp:n_decode_total": "counter",
    "llamacpp:n_tokens_max": "counter",
    "llamacpp:spec_decode_num_draft_tokens_total": "counter",
    "llamacpp:spec_decode_num_accepted_tokens_total": "counter",
    "llamacpp:spec_decode_num_drafts_total": "counter",
    "llamacpp:prompt_tokens_seconds": "gauge",
    "llamacpp:predicted_tokens_seconds": "gauge",
    "llamacpp:requests_processing": "gauge",
    "llamacpp:requests_deferred": "gauge",
    "llamacpp:n_busy_slots_per_decode": "gauge",
}


def parse(text: str) -> dict[str, tuple[str, float]]:
    """Prometheus text: each metric's type and value; every metric has its HELP and TYPE."""
    helps: set[str] = set()
    types: dict[str, str] = {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, description = line[len("# HELP ") :].split(" ", 1)
            assert description
            helps.add(name)
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            types[name] = kind
        else:
            name, value = line.split(" ")
            values[name] = float(value)
    assert helps == set(types) == set(values)
    return {name: (types[name], values[name]) for name in values}


def scrape(child: ChildProcess) -> dict[str, float]:
    response = httpx.get(f"{child.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return {name: value for name, (_, value) in parse(response.text).items()}


@pytest.fixture
def client(shared_child: ChildProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=shared_child.openai_base_url, api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


def test_metrics_have_llama_servers_names_types_and_format(shared_child: ChildProcess) -> None:
    response = httpx.get(f"{shared_child.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4"
    assert response.text.endswith("\n")
    metrics = parse(response.text)
    assert {name: kind for name, (kind, _) in metrics.items()} == LLAMA_SERVER_METRICS


def test_counters_grow_by_what_a_request_cost(
    shared_child: ChildProcess, client: openai.OpenAI
) -> None:
    before = scrape(shared_child)
    usage = client.completions.create(
        model="tiny", prompt="count me", max_tokens=7, extra_body={"ignore_eos": True}
    ).usage
    after = scrape(shared_child)
    assert usage is not None

    def grew(name: str) -> float:
        return after[f"llamacpp:{name}"] - before[f"llamacpp:{name}"]

    assert grew("tokens_predicted_total") == 7
    assert grew("prompt_tokens_total") + grew("prompt_tokens_cached_total") == usage.prompt_tokens
    assert grew("prompt_tokens_total") >= 1  # the last prompt token is always evaluated
    assert grew("n_decode_total") >= 7  # the prompt, then one per token but the last
    assert grew("prompt_seconds_total") > 0
    assert grew("tokens_predicted_seconds_total") > 0
    assert after["llamacpp:n_tokens_max"] >= usage.total_tokens
    assert after["llamacpp:requests_processing"] == 0
    assert after["llamacpp:requests_deferred"] == 0


def test_throughput_gauges_cover_the_time_since_the_last_scrape(
    shared_child: ChildProcess, client: openai.OpenAI
) -> None:
    client.completions.create(
        model="tiny", prompt="gauge", max_tokens=5, extra_body={"ignore_eos": True}
    )
    first = scrape(shared_child)
    assert first["llamacpp:predicted_tokens_seconds"] > 0
    assert first["llamacpp:prompt_tokens_seconds"] > 0
    second = scrape(shared_child)  # nothing ran in between
    assert second["llamacpp:predicted_tokens_seconds"] == 0
    assert second["llamacpp:prompt_tokens_seconds"] == 0


def test_queue_gauges_and_busy_slots_per_decode() -> None:
    page = MetricsPage()
    engine = EngineMetrics(n_decode_total=4, n_busy_slots_total=10)
    metrics = parse(page.render(engine, QueueState(requests_processing=3, requests_deferred=2)))
    assert metrics["llamacpp:requests_processing"] == ("gauge", 3.0)
    assert metrics["llamacpp:requests_deferred"] == ("gauge", 2.0)
    assert metrics["llamacpp:n_busy_slots_per_decode"] == ("gauge", 2.5)
