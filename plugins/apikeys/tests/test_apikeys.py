"""The apikeys plugin, installed as a package and loaded through its entry point."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import httpx
import pytest

from llama_router_apikeys import KeyStore
from tests.processes import running_router
from tests.tiny_models import write_tiny_llama


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny.gguf")
    write_tiny_llama(models / "secret.gguf", seed=2)
    keys = tmp_path / "keys.toml"
    keys.write_text(
        textwrap.dedent(f"""
        [[key]]
        name = "alice"
        sha256 = "{sha("alice-key")}"
        models = ["tiny*"]
        requests_per_minute = 2

        [[key]]
        name = "boss"
        sha256 = "{sha("boss-key")}"
        admin = true
        tokens_per_day = 3
    """)
    )
    monkeypatch.setenv("LLAMA_ROUTER_APIKEYS_FILE", str(keys))
    return tmp_path


def ask(base: str, key: str, model: str = "tiny") -> httpx.Response:
    return httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 2, "ignore_eos": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_keys_models_and_rate_limits_through_the_entry_point(site: Path) -> None:
    with running_router(site / "models") as router:
        base = router.base_url
        assert ask(base, "nobody").status_code == 401
        assert ask(base, "alice-key").status_code == 200
        assert ask(base, "alice-key", "secret").status_code == 403
        assert ask(base, "alice-key").status_code == 200
        limited = ask(base, "alice-key")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        # boss: 3 tokens a day; one request (2 prompt + 2 completion tokens) uses them up
        assert ask(base, "boss-key", "secret").status_code == 200
        over = ask(base, "boss-key", "secret")
        assert over.status_code == 429
        assert "tokens for today" in over.json()["error"]["message"]


def test_the_keys_file_is_read_again_when_it_changes(site: Path) -> None:
    with running_router(site / "models") as router:
        assert ask(router.base_url, "carol-key").status_code == 401
        keys = site / "keys.toml"
        keys.write_text(
            keys.read_text() + f'\n[[key]]\nname = "carol"\nsha256 = "{sha("carol-key")}"\n'
        )
        assert ask(router.base_url, "carol-key").status_code == 200


def test_rate_window_slides(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[key]]\nname = "k"\nsha256 = "{sha("k")}"\nrequests_per_minute = 1\n')
    now = [1000.0]
    store = KeyStore(keys, clock=lambda: now[0])
    key = store.find("k")
    assert key is not None
    assert store.check_rate(key) is None
    denial = store.check_rate(key)
    assert denial is not None and denial.retry_after_s == 60
    now[0] += 60
    assert store.check_rate(key) is None
    assert store.find("not-k") is None
