"""Ollama's API on a real router, driven by the official ``ollama`` client (and httpx where
the wire itself is the point): listing, loading and unloading, chat and generate streamed
and not, embeddings, and errors in Ollama's shape."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from router.edge.ollama_answers import Answer, Durations
from router.edge.ollama_requests import chat_call, generate_call, keep_alive_seconds
from router.edge.sse import EventStream, json_payloads
from router.errors import InvalidField
from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import CHATML_TEMPLATE, write_tiny_llama

KEY = "ollama-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GREEDY = {"temperature": 0, "top_k": 1, "seed": 7}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (a chat model, no embeddings) in the models folder, and ``embedder`` (the same
    weights, started with embeddings, pinned) in conf.d."""
    site = tmp_path_factory.mktemp("ollama")
    (site / "models").mkdir()
    (site / "conf.d").mkdir()
    write_tiny_llama(site / "models" / "tiny.gguf")
    (site / "conf.d" / "embedder.toml").write_text(
        'model = "../models/tiny.gguf"\npinned = true\n[args]\nembeddings = true\n'
    )
    return site


@pytest.fixture(scope="module")
def router(site: Path) -> Iterator[RouterProcess]:
    with running_router(
        site / "models", "--conf-dir", str(site / "conf.d"), "--api-key", KEY, "-c", "1024",
        cwd=site,
    ) as router:  # fmt: skip
        yield router


@pytest.fixture
def client(router: RouterProcess) -> ollama.Client:
    return ollama.Client(host=router.base_url, headers=AUTH, timeout=60)


def loaded(router: RouterProcess) -> set[str]:
    models = httpx.get(f"{router.base_url}/api/ps", headers=AUTH, timeout=10).json()["models"]
    return {model["name"] for model in models}


def status(router: RouterProcess, model: str) -> str:
    """The model's status as the router's own ``GET /models`` says it."""
    data = httpx.get(f"{router.base_url}/models", headers=AUTH, timeout=10).json()["data"]
    found: str = next(entry for entry in data if entry["id"] == model)["status"]["value"]
    return found


def tiny_png() -> str:
    """A 1x1 PNG, base64-encoded as Ollama's ``images`` carry it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


# ---- keep_alive, parsed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (None, None),
        ("", None),
        (0, 0.0),
        ("0", 0.0),
        (30, 30.0),
        ("30", 30.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        (-1, math.inf),
        ("-1", math.inf),
        ("-1m", math.inf),
    ],
)
def test_keep_alive_reads_seconds_and_go_durations(given: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(given) == seconds


@pytest.mark.parametrize("given", ["soon", "5 minutes", "5d", "m", True, [1], {"s": 1}, "nan"])
def test_keep_alive_that_is_no_duration_is_refused_saying_what_is(given: Any) -> None:
    with pytest.raises(InvalidField, match="duration such as"):
        keep_alive_seconds(given)


# ---- translation, without a router ------------------------------------------------------------


def test_options_and_format_become_the_childs_fields() -> None:
    call = generate_call(
        {
            "prompt": "p",
            "format": {"type": "object"},
            "options": {"temperature": 0.5, "num_predict": -1, "num_ctx": 99, "stop": ["x"]},
        },
        "m",
        has_projector=False,
    )
    assert call.path == "/v1/chat/completions"
    assert call.body["messages"] == [{"role": "user", "content": "p"}]
    assert call.body["temperature"] == 0.5 and call.body["stop"] == ["x"]
    assert "max_tokens" not in call.body  # -1: no limit of the request's own
    assert not any("ctx" in key for key in call.body)  # num_ctx: the model's ctx_size stands
    assert call.body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert call.body["stream"] is True  # always streamed from the child, for its timings
    raw = generate_call({"prompt": "p", "raw": True, "format": "json"}, "m", has_projector=False)
    assert raw.path == "/v1/completions" and raw.body["prompt"] == "p"
    assert raw.body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"prompt": "p", "suffix": "s"}, "suffix"),
        ({"prompt": "p", "template": "{{ .Prompt }}"}, "template"),
        ({"prompt": "p", "options": []}, "options"),
        ({"prompt": "p", "format": "yaml"}, "format"),
        ({"prompt": "p", "options": {"num_predict": "many"}}, "options.num_predict"),
    ],
)
def test_what_a_child_cannot_do_is_refused_naming_the_field(
    request_body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidField) as refused:
        generate_call(request_body, "m", has_projector=False)
    assert refused.value.param == field


def test_images_become_data_urls_for_a_model_with_a_projector() -> None:
    message = {"role": "user", "content": "what?", "images": [tiny_png()]}
    call = chat_call({"messages": [message]}, "m", has_projector=True)
    text, image = call.body["messages"][0]["content"]
    assert text == {"type": "text", "text": "what?"}
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBOR")


def test_an_sse_stream_cut_anywhere_gives_the_same_objects() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "timings": {
            "prompt_n": 3, "cache_n": 2, "prompt_ms": 1.5, "predicted_n": 2, "predicted_ms": 4.0
        }},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]  # fmt: skip
    wire = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
    wire += b"data: [DONE]\n\n"
    for size in (1, 7, len(wire)):
        events, answer = EventStream(), Answer("m", "message")
        pieces = [
            made["message"]["content"]
            for start in range(0, len(wire), size)
            for payload in json_payloads(events.feed(wire[start : start + size]))
            for made in answer.take(payload)
        ]
        assert pieces == ["Hel", "lo"]
        last = answer.final(Durations(total_ns=10**7, load_ns=0), whole=True)
        assert last["message"]["content"] == "Hello" and last["done_reason"] == "stop"
        assert (last["prompt_eval_count"], last["eval_count"]) == (5, 2)
        assert (last["prompt_eval_duration"], last["eval_duration"]) == (1_500_000, 4_000_000)


# ---- listing -----------------------------------------------------------------------------------


def test_a_key_is_required_when_the_router_has_one(router: RouterProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=router.base_url, headers=headers).list()
        assert refused.value.status_code == 401
        assert "API key" in refused.value.error
    raw = httpx.get(f"{router.base_url}/api/tags", timeout=10)
    assert isinstance(raw.json()["error"], str)  # Ollama's shape, not OpenAI's


def test_tags_list_every_model_with_its_ggufs_details(client: ollama.Client, site: Path) -> None:
    listing = {model.model: model for model in client.list().models}
    assert sorted(listing) == ["embedder", "tiny"]
    weights = site / "models" / "tiny.gguf"
    tiny = listing["tiny"]
    assert tiny.size == weights.stat().st_size
    assert tiny.modified_at is not None
    assert abs(tiny.modified_at.timestamp() - weights.stat().st_mtime) < 1
    assert tiny.digest is not None and len(tiny.digest) == 64
    assert tiny.details is not None
    assert tiny.details.format == "gguf"
    assert tiny.details.family == "llama"
    assert tiny.details.quantization_level == "F32"
    assert tiny.details.parameter_size == "115.52K"  # from the tensors' shapes
    assert listing["embedder"].digest == tiny.digest  # the same file


def test_show_gives_the_template_header_and_capabilities(client: ollama.Client) -> None:
    shown = client.show("tiny")
    assert shown.template == CHATML_TEMPLATE
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["general.name"] == "tiny-test-llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert not any(key.startswith("tokenizer.chat_template") for key in shown.modelinfo)
    assert shown.parameters == "num_ctx 1024"
    assert shown.capabilities == ["completion"]
    assert client.show("embedder").capabilities == ["completion", "embedding"]
    assert client.show("tiny:latest").template == CHATML_TEMPLATE  # Ollama's default tag


def test_an_unknown_model_is_ollamas_404(client: ollama.Client) -> None:
    for call in (
        lambda: client.chat(model="nope", messages=[{"role": "user", "content": "hi"}]),
        lambda: client.show("nope"),
        lambda: client.embed(model="nope", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as missing:
            call()
        assert missing.value.status_code == 404
        assert missing.value.error.startswith('model "nope" not found, try pulling it first')
        assert "tiny" in missing.value.error  # what there is instead


def test_routes_ollama_has_and_the_router_does_not_say_so(router: RouterProcess) -> None:
    answer = httpx.post(f"{router.base_url}/api/pull", json={"model": "x"}, headers=AUTH)
    assert answer.status_code == 404
    assert "does not offer /api/pull" in answer.json()["error"]
    wrong_method = httpx.get(f"{router.base_url}/api/chat", headers=AUTH)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    version = httpx.get(f"{router.base_url}/api/version", headers=AUTH).json()["version"]
    assert version.count(".") == 2


# ---- generating ------------------------------------------------------------------------------


def test_chat_streams_ndjson_pieces_then_a_done_object_with_counts(
    client: ollama.Client, router: RouterProcess
) -> None:
    request: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "options": {**GREEDY, "num_predict": 6},
    }
    parts = list(client.chat(**request, stream=True))
    assert all(not part.done for part in parts[:-1])
    pieces = "".join(part.message.content or "" for part in parts)
    last = parts[-1]
    assert last.done and last.done_reason == "length"
    assert last.eval_count == 6
    assert last.prompt_eval_count is not None and last.prompt_eval_count > 0
    assert last.total_duration is not None and last.eval_duration is not None
    assert 0 < last.eval_duration <= last.total_duration
    whole = client.chat(**request, stream=False)
    assert whole.done and whole.message.content == pieces
    same = openai.OpenAI(base_url=router.openai_base_url, api_key=KEY, max_retries=0)
    reference = same.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6,
        temperature=0, top_p=1, seed=7, extra_body={"top_k": 1},
    )  # fmt: skip
    assert reference.choices[0].message.content == pieces
    with httpx.stream(
        "POST", f"{router.base_url}/api/chat", json=request, headers=AUTH, timeout=30
    ) as wire:  # stream is Ollama's default
        assert wire.headers["content-type"] == "application/x-ndjson"
        lines = list(wire.iter_lines())
    assert len(lines) == len(parts)


def test_generate_is_templated_unless_raw(client: ollama.Client, router: RouterProcess) -> None:
    same = openai.OpenAI(base_url=router.openai_base_url, api_key=KEY, max_retries=0)
    options = {**GREEDY, "num_predict": 5}
    templated = client.generate(model="tiny", prompt="abc", system="be brief", options=options)
    chat = same.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "abc"}],
        max_tokens=5, temperature=0, seed=7, extra_body={"top_k": 1},
    )  # fmt: skip
    assert templated.response == chat.choices[0].message.content
    raw = client.generate(model="tiny", prompt="abc", raw=True, options=options, stream=False)
    completion = same.completions.create(
        model="tiny", prompt="abc", max_tokens=5, temperature=0, seed=7, extra_body={"top_k": 1}
    )
    assert raw.response == completion.choices[0].text
    assert raw.prompt_eval_count == completion.usage.prompt_tokens if completion.usage else False
    streamed = "".join(
        part.response or "" for part in client.generate(model="tiny", prompt="abc", raw=True,
                                                         options=options, stream=True)
    )  # fmt: skip
    assert streamed == raw.response


def test_format_json_constrains_the_output(client: ollama.Client) -> None:
    answer = client.generate(
        model="tiny", prompt="x", format="json", options={**GREEDY, "num_predict": 8}
    )
    assert answer.response is not None
    assert answer.response.lstrip().startswith("{")


def test_images_need_a_projector(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(
            model="tiny",
            messages=[{"role": "user", "content": "what is this?", "images": [tiny_png()]}],
        )
    assert refused.value.status_code == 400
    assert "no projector (no mmproj" in refused.value.error


def test_a_client_that_leaves_stops_the_generation(
    client: ollama.Client, router: RouterProcess
) -> None:
    request = {
        "model": "tiny",
        "prompt": "go",
        "raw": True,
        "options": {**GREEDY, "num_predict": 600},
    }
    finished = client.generate(**request, stream=False)
    assert finished.done_reason == "length" and finished.eval_count == 600  # it runs that long
    with httpx.stream(
        "POST", f"{router.base_url}/api/generate", json=request, headers=AUTH, timeout=30
    ) as wire:
        lines = wire.iter_lines()
        for _ in range(3):
            next(lines)

    def slot() -> dict[str, Any]:
        slots = httpx.get(
            f"{router.base_url}/slots", params={"model": "tiny"}, headers=AUTH, timeout=10
        ).json()
        first: dict[str, Any] = slots[0]
        return first

    wait_until(lambda: not slot()["is_processing"], "tiny's slot is idle")
    assert slot()["next_token"]["n_decoded"] < 600


# ---- embeddings ------------------------------------------------------------------------------


def test_embed_gives_one_normalized_vector_per_input(client: ollama.Client) -> None:
    vectors = client.embed(model="embedder", input=["alpha", "beta"]).embeddings
    assert len(vectors) == 2 and all(len(vector) == 64 for vector in vectors)
    assert all(abs(math.hypot(*vector) - 1) < 1e-3 for vector in vectors)
    assert vectors[0] != vectors[1]
    one = client.embed(model="embedder", input="alpha").embeddings
    assert one[0] == pytest.approx(vectors[0], abs=1e-5)
    older = client.embeddings(model="embedder", prompt="alpha").embedding
    assert list(older) == pytest.approx(vectors[0], abs=1e-5)


def test_embed_on_a_model_without_embeddings_is_a_400_with_the_reason(
    client: ollama.Client,
) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="tiny", input="x")
    assert refused.value.status_code == 400  # not retried: the model lacks the feature
    assert "--embeddings" in refused.value.error


# ---- keep_alive ------------------------------------------------------------------------------


def test_keep_alive_0_unloads_the_model_after_the_request(
    client: ollama.Client, router: RouterProcess
) -> None:
    client.generate(model="tiny", keep_alive="1h")  # loaded, and kept
    assert "tiny" in loaded(router)
    answer = client.chat(
        model="tiny", messages=[{"role": "user", "content": "hi"}], keep_alive=0,
        options={"num_predict": 2},
    )  # fmt: skip
    assert answer.done and answer.eval_count == 2  # answered first
    wait_until(lambda: status(router, "tiny") == "unloaded", "tiny is unloaded")
    assert "tiny" not in loaded(router)


def test_a_generate_with_no_prompt_loads_or_unloads(
    client: ollama.Client, router: RouterProcess
) -> None:
    load = client.generate(model="tiny")
    assert load.done and load.done_reason == "load"
    assert status(router, "tiny") == "loaded"
    unload = client.generate(model="tiny", keep_alive=0)
    assert unload.done_reason == "unload"
    wait_until(lambda: status(router, "tiny") == "unloaded", "tiny is unloaded")


def test_keep_alive_sets_when_ps_says_the_model_expires(client: ollama.Client) -> None:
    def expiry() -> datetime:
        (tiny,) = [model for model in client.ps().models if model.model == "tiny"]
        assert tiny.expires_at is not None and tiny.size_vram == 0
        return tiny.expires_at

    client.generate(model="tiny", keep_alive="10m")
    now = datetime.now(UTC)
    assert now + timedelta(minutes=9) < expiry() <= now + timedelta(minutes=10, seconds=1)
    client.generate(model="tiny", keep_alive=-1)
    assert expiry() > now + timedelta(days=365 * 100)
    client.generate(model="tiny", keep_alive=0)


def test_a_pinned_model_is_not_unloaded_by_a_client(client: ollama.Client) -> None:
    client.embed(model="embedder", input="x")
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="embedder", keep_alive=0)
    assert refused.value.status_code == 409
    assert "pinned by the operator" in refused.value.error
