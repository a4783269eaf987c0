"""Downloads into the model cache, end to end: a real router, ``huggingface_hub`` against a
fake hub on loopback (``HF_ENDPOINT``), ``POST /models``, ``-hf``, ``DELETE /models``."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from router.models.hf_cache import scan_cache
from tests.fake_hub import FakeHub, serving_fake_hub
from tests.processes import running_router
from tests.test_events_e2e import reading
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama

REPO = "org/tiny"
ADMIN_KEY = "admin-key-for-downloads"
USER_KEY = "user-key-for-downloads"


@pytest.fixture
def hub(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A hub with ``org/tiny`` in two quants; the router's cache in ``tmp_path/cache``."""
    fake = FakeHub()
    fake.add_file(REPO, "tiny-Q4_K_M.gguf", tiny_model)
    fake.add_file(REPO, "tiny-Q8_0.gguf", tiny_model)
    fake.add_file(REPO, "README.md", b"# tiny\n")
    fake.add_file("org/no-gguf", "model.safetensors", b"weights")
    with serving_fake_hub(fake) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.endpoint)
        monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield served


def listed(base_url: str) -> dict[str, str]:
    data = httpx.get(f"{base_url}/models", timeout=10).json()["data"]
    return {entry["id"]: entry["source"] for entry in data}


def test_post_models_downloads_tells_its_progress_then_serves_it_and_delete_removes_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    model = f"{REPO}:Q8_0"
    with (
        running_router(None, cwd=tmp_path) as router,
        reading(f"{router.base_url}/models/sse") as sse,
    ):
        assert listed(router.base_url) == {}
        answer = httpx.post(f"{router.base_url}/models", json={"model": "org/tiny:q8_0"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"success": True, "model": model}
        wait_until(lambda: model in listed(router.base_url), "the download is listed")

        def told() -> list[str]:
            return [e["event"] for e in sse.events if e["model"] == model]

        # The listing may answer before the events stream's reader has read them all.
        wait_until(lambda: "model_add" in told(), "the new model is told")
        mine = told()
        assert mine[0] == "download_progress" and set(mine[:-2]) == {"download_progress"}
        assert mine[-2:] == ["download_finished", "model_add"]
        url = f"{hub.endpoint}/{REPO}/resolve/main/tiny-Q8_0.gguf"
        last = [e for e in sse.events if e["event"] == "download_progress"][-1]
        size = len(hub.repos[REPO]["tiny-Q8_0.gguf"])
        assert last["data"] == {"progress": {url: {"done": size, "total": size}}}
        assert listed(router.base_url) == {model: "cache"}

        client = openai.OpenAI(base_url=router.openai_base_url, api_key="none", max_retries=0)
        completion = client.completions.create(model=model, prompt="hi", max_tokens=2)
        assert completion.model == model

        again = httpx.post(f"{router.base_url}/models", json={"model": model})
        assert again.status_code == 400 and "already exists" in again.text

        removed = httpx.delete(f"{router.base_url}/models", params={"model": model})
        assert removed.status_code == 200, removed.text
        wait_until(lambda: _seen_event(sse.events, model, "model_remove"), "model_remove is told")
        assert model not in listed(router.base_url)
        assert scan_cache(tmp_path / "cache") == {}
        gone = httpx.delete(f"{router.base_url}/models", params={"model": model})
        assert gone.status_code == 404


def _seen_event(events: list[dict[str, object]], model: str, name: str) -> bool:
    return any(e["model"] == model and e["event"] == name for e in events)


def test_a_cut_download_resumes_with_a_range_request_and_the_file_is_intact(
    hub: FakeHub, tmp_path: Path
) -> None:
    # Larger than the 1 MiB that huggingface_hub reads at a time: the cut comes after some of it
    # was written, so the second request asks only for the rest.
    big = write_tiny_llama(tmp_path / "big.gguf", n_embd=256, n_ff=1024)
    hub.add_file("org/big", "big-Q4_K_M.gguf", big)
    hub.cut_once.add("org/big/big-Q4_K_M.gguf")
    with running_router(None, cwd=tmp_path) as router:
        answer = httpx.post(f"{router.base_url}/models", json={"model": "org/big"})
        assert answer.status_code == 200, answer.text
        wait_until(lambda: "org/big:Q4_K_M" in listed(router.base_url), "the download is listed")
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("big-Q4_K_M.gguf")]
    assert len(gets) == 2 and gets[0][2] is None
    assert gets[1][2] is not None and gets[1][2].startswith("bytes=") and gets[1][2] != "bytes=0-"
    path = scan_cache(tmp_path / "cache")["org/big:Q4_K_M"].path
    assert path is not None
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_hf_flag_downloads_before_serving_beside_models_dir(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    with running_router(tiny_model.parent, "-hf", f"{REPO}:Q8_0", cwd=tmp_path) as router:
        models = listed(router.base_url)
        assert models[f"{REPO}:Q8_0"] == "cache" and models["tiny"] == "models_dir"
        assert f"{tmp_path / 'cache'} (cache)" in router.stderr_text()


def test_hf_flag_for_a_missing_quant_stops_with_the_reason(hub: FakeHub, tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="has no GGUF file for tag Q5_K"),
        running_router(None, "-hf", f"{REPO}:Q5_K", cwd=tmp_path),
    ):
        pass


def test_hf_flag_for_a_preset_repository_serves_its_preset(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    """As llama-server: a repository with a preset.ini at its root is a preset; -hf fetches
    that file alone and serves it as --models-preset (its models come from the cache)."""
    hub.add_file("org/presets", "preset.ini", b"version = 1\n\n[from-preset]\nhf-repo = org/tiny\n")
    hub.add_file("org/presets", "unrelated-Q8_0.gguf", tiny_model)
    with running_router(None, "-hf", f"{REPO}:Q8_0", cwd=tmp_path):
        pass  # org/tiny:Q8_0 is in the cache now, for the preset to name
    with running_router(None, "-hf", "org/presets", cwd=tmp_path) as router:
        models = listed(router.base_url)
        assert "from-preset" in models and "org/presets:Q8_0" not in models
        refused = httpx.post(f"{router.base_url}/models", json={"model": "org/presets"})
        assert refused.status_code == 400
        assert "preset repository" in refused.json()["error"]["message"]


def test_unload_cancels_a_download(hub: FakeHub, tmp_path: Path) -> None:
    release = threading.Event()
    hub.hold["org/tiny/tiny-Q4_K_M.gguf"] = release
    model = f"{REPO}:Q4_K_M"
    with (
        running_router(None, cwd=tmp_path) as router,
        reading(f"{router.base_url}/models/sse") as sse,
    ):
        assert httpx.post(f"{router.base_url}/models", json={"model": REPO}).status_code == 200
        wait_until(lambda: any(r[0] == "GET" and "resolve" in r[1] for r in hub.requests),
                   "the file is being sent")  # fmt: skip
        unload = httpx.post(f"{router.base_url}/models/unload", json={"model": model})
        assert unload.status_code == 200, unload.text
        release.set()
        wait_until(sse.seen(model, reason="cancelled"), "download_failed is told")
        failed = sse.find(model, reason="cancelled")
        assert failed is not None and failed["event"] == "download_failed"
        assert model not in listed(router.base_url)


def test_what_cannot_be_downloaded_or_removed_is_refused_with_the_reason(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    keys = ("--api-key", USER_KEY, "--admin-api-key", ADMIN_KEY)
    with running_router(tiny_model.parent, *keys, cwd=tmp_path) as router:
        admin = httpx.Client(
            base_url=router.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        user = httpx.Client(
            base_url=router.base_url, headers={"Authorization": f"Bearer {USER_KEY}"}
        )
        with admin, user:
            cases = [
                ({"model": f"{REPO}:Q5_K"}, 400, "no GGUF file for tag Q5_K"),
                ({"model": "org/no-gguf"}, 400, "no GGUF file"),
                ({"model": "org/missing"}, 400, "no repository 'org/missing'"),
                ({"model": "not-a-repo"}, 400, "ORG/REPO"),
                ({"model": 3}, 400, "ORG/REPO[:QUANT]"),
            ]
            for body, status, message in cases:
                answer = admin.post("/models", json=body)
                assert answer.status_code == status, (body, answer.text)
                assert message in answer.json()["error"]["message"]
            denied = user.post("/models", json={"model": REPO})
            assert denied.status_code == 403 and "admin key" in denied.text
            form_type = {"Content-Type": "application/x-www-form-urlencoded"}
            form = admin.post("/models", content="model=org/tiny", headers=form_type)
            assert form.status_code == 415
            folder_model = admin.delete("/models", params={"model": "tiny"})
            assert folder_model.status_code == 400
            assert "--models-dir" in folder_model.json()["error"]["message"]
            assert admin.delete("/models").status_code == 400
            assert user.delete("/models", params={"model": "tiny"}).status_code == 403
            assert "tiny" in listed_with(admin)


def listed_with(client: httpx.Client) -> list[str]:
    return [entry["id"] for entry in client.get("/models").json()["data"]]
