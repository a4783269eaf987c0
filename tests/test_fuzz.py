"""Hostile JSON at every route of a real router with a real child: an error a person can act
on, never a crash. The router answers ``/health`` after every request."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.models.confd import MODEL_KEYS
from tests.processes import RouterProcess, running_router

ADMIN = "fuzz-admin-key"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
# The one honest 5xx answer: "not available now". What the server or a model does not do is
# a 400 (not_supported_error), which clients do not retry.
HONEST_5XX = {503: "unavailable_error"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
model_names = st.sampled_from(["tiny", "nope", "", "tiny\x00", "../tiny"]) | json_values
FIELDS = (
    "prompt", "messages", "max_tokens", "n_predict", "temperature", "top_p", "top_k", "min_p",
    "stream", "stream_options", "n", "stop", "seed", "logit_bias", "grammar", "json_schema",
    "response_format", "input", "content", "tokens", "add_special", "with_pieces", "args",
    "ignore_eos", "presence_penalty", "frequency_penalty", "logprobs", "tools", "encoding_format",
    "tool_choice", "parallel_tool_calls", "reasoning_format",
)  # fmt: skip
ROUTES = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize",
    "/completion", "/models/load", "/models/unload", "/props", "/v1/unknown",
)  # fmt: skip
bodies = st.fixed_dictionaries(
    {},
    optional={"model": model_names, **{field: json_values for field in FIELDS}},
)
# A model's conf.d file, through the config API. 'name' is left out: renaming the file's
# model to "tiny" would (rightly) take the test's own model away.
config_bodies = st.fixed_dictionaries(
    {}, optional={key: json_values for key in MODEL_KEYS if key != "name"}
) | st.dictionaries(st.text(max_size=12), json_values, max_size=3)

tried: list[int] = []


@pytest.fixture(scope="module")
def fuzzed_router(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[RouterProcess]:
    site = tmp_path_factory.mktemp("fuzz")
    (site / "models").mkdir()
    shutil.copy(tiny_model, site / "models" / "tiny.gguf")
    (site / "conf.d").mkdir()
    (site / "conf.d" / "fuzzed.toml").write_text('model = "../models/tiny.gguf"\n')
    with running_router(
        site / "models", "--conf-dir", str(site / "conf.d"), "-c", "256",
        "--allow-config-writes", "--admin-api-key", ADMIN, "--models-allow-extra-args",
    ) as router:  # fmt: skip
        yield router
        assert router.process.poll() is None, router.stderr_text()
    print(f"\nfuzz: {len(tried)} requests, answers by status: {dict(Counter(tried))}")


def check_answer(router: RouterProcess, response: httpx.Response) -> None:
    tried.append(response.status_code)
    status = response.status_code
    if status >= 500:
        body = response.json()
        assert HONEST_5XX.get(status) == body["error"]["type"], (status, response.text)
    elif status >= 400:
        assert response.json()["error"]["message"], response.text
    health = httpx.get(f"{router.base_url}/health", timeout=10)
    assert health.status_code == 200, router.stderr_text()[-3000:]


def _send(router: RouterProcess, method: str, path: str, body: Any) -> httpx.Response:
    content = json.dumps(body).encode()
    return httpx.request(
        method,
        f"{router.base_url}{path}",
        content=content,
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=60,
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(ROUTES), body=bodies | json_values)
def test_every_route_answers_hostile_json_with_a_clear_error(
    fuzzed_router: RouterProcess, route: str, body: Any
) -> None:
    if isinstance(body, dict) and body.get("stream") is True:
        body["max_tokens"] = 4  # a stream is read to its end: keep it short
    check_answer(fuzzed_router, _send(fuzzed_router, "POST", route, body))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=st.sampled_from(["PUT", "PATCH"]), body=config_bodies | json_values)
def test_the_config_api_answers_hostile_json_with_a_clear_error(
    fuzzed_router: RouterProcess, method: str, body: Any
) -> None:
    check_answer(fuzzed_router, _send(fuzzed_router, method, "/models/fuzzed/config", body))
    listed = httpx.get(f"{fuzzed_router.base_url}/models", headers=HEADERS, timeout=10)
    assert listed.status_code == 200
