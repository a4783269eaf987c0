"""The memory-fit plugin: estimates from real GGUF headers, and evictions by memory."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llama_router_memory_fit import memory_need
from router import ModelInfo
from tests.processes import running_router
from tests.test_router_e2e import statuses, wait_until
from tests.tiny_models import write_tiny_llama


def info(path: Path, ctx_size: int) -> ModelInfo:
    return ModelInfo(
        id=path.stem,
        path=path,
        aliases=(),
        status="unloaded",
        in_flight=0,
        last_used=0.0,
        args={"ctx_size": ctx_size},
        is_pinned=False,
    )


def test_need_is_weights_plus_kv_cache(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_embd=512, n_ff=2048)
    small, large = memory_need(info(path, 256)), memory_need(info(path, 2256))
    # KV cache: 2 layers x 4 heads x (128 + 128) x 2 bytes = 4 KiB per token
    assert large - small == 2000 * 4096
    assert small > path.stat().st_size


def test_a_context_of_zero_is_the_trained_context(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", context_length=1024)
    assert memory_need(info(path, 0)) == memory_need(info(path, 1024))


def test_an_unreadable_header_counts_as_weights_only(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf")
    path.write_bytes(path.read_bytes()[:100])  # cut inside the metadata
    assert memory_need(info(path, 4096)) == int(100 * 1.05)


def test_models_are_evicted_by_memory_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for seed, name in enumerate(("a", "b", "c")):
        write_tiny_llama(models / f"{name}.gguf", seed=seed, n_embd=512, n_ff=2048)
    size = (models / "a.gguf").stat().st_size
    monkeypatch.setenv("LLAMA_ROUTER_MEMORY_FIT", "1")
    monkeypatch.setenv("LLAMA_ROUTER_MEMORY_BUDGET", str(int(size * 2.5)))  # room for two
    with running_router(models, "--models-max", "0", "-c", "256") as router:
        for model in ("a", "b", "c"):
            response = httpx.post(
                f"{router.base_url}/v1/completions",
                timeout=30,
                json={"model": model, "prompt": "x", "max_tokens": 1},
            )
            assert response.status_code == 200
        wait_until(lambda: statuses(router)["a"] == "unloaded", "a makes room for c")
        assert statuses(router) == {"a": "unloaded", "b": "loaded", "c": "loaded"}
