"""The apikeys plugin, installed as a package and loaded through its entry point."""

from __future__ import annotations

import hashlib
import textwrap
import time
from pathlib import Path

import httpx
import openai
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


def ask(
    base: str, key: str, model: str = "tiny", body: dict[str, object] | None = None
) -> httpx.Response:
    """A two-token completion, or ``body`` (one without a prompt costs no tokens: 400)."""
    return httpx.post(
        f"{base}/v1/completions",
        json=body or {"model": model, "prompt": "x", "max_tokens": 2, "ignore_eos": True},
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


def test_a_stream_without_usage_uses_up_the_daily_tokens(site: Path) -> None:
    keys = site / "keys.toml"
    keys.write_text(f'[[key]]\nname = "dora"\nsha256 = "{sha("dora-key")}"\ntokens_per_day = 3\n')
    with running_router(site / "models") as router:
        client = openai.OpenAI(base_url=f"{router.base_url}/v1", api_key="dora-key", timeout=60)
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=16,
                stream=True, extra_body={"ignore_eos": True},
            )
        )  # fmt: skip
        assert all(chunk.usage is None for chunk in chunks)
        assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) > 3
        # The router charges just after the last byte went out: ask until it has (bounded).
        deadline = time.monotonic() + 30
        while ask(router.base_url, "dora-key", body={"model": "tiny"}).status_code != 429:
            assert time.monotonic() < deadline, "the stream's tokens were never charged"
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError, match="tokens for today"):
            client.completions.create(model="tiny", prompt="x", max_tokens=1)


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


def test_daily_tokens_start_again_at_utc_midnight(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[key]]\nname = "k"\nsha256 = "{sha("k")}"\ntokens_per_day = 10\n')
    now = [86400.0 * 20000 - 5]  # five seconds before a UTC midnight
    store = KeyStore(keys, clock=lambda: now[0])
    key = store.find("k")
    assert key is not None
    store.add_tokens("k", 10)
    denial = store.check_rate(key)
    assert denial is not None and denial.retry_after_s == 5
    now[0] += 5
    assert store.check_rate(key) is None
    store.add_tokens("k", 9)
    assert store.check_rate(key) is None
