"""``ps`` names each child by its model, a waiting spare as a spare, and a spare that is handed
a model by that model."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.processes import running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama


def title_of(pid: int) -> str:
    """What ``ps -ef`` shows for ``pid``: its command line, arguments joined by spaces."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return " ".join(arg.decode() for arg in raw.split(b"\0") if arg)


def spare_pids(base_url: str) -> list[int]:
    return [spare["pid"] for spare in httpx.get(f"{base_url}/models", timeout=10).json()["spares"]]


def test_ps_shows_each_child_by_its_model_and_a_spare_as_a_spare(tmp_path: Path) -> None:
    write_tiny_llama(tmp_path / "first.gguf")
    write_tiny_llama(tmp_path / "second.gguf", seed=2)
    with running_router(tmp_path, "--spares", "1") as router:
        wait_until(lambda: len(spare_pids(router.base_url)) == 1, "a spare starts")
        spare = spare_pids(router.base_url)[0]
        wait_until(lambda: title_of(spare) == "llama-router child: (spare)", "the spare's title")

        answer = httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "second", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
        assert answer.status_code == 200
        assert router.child_pids()["second"] == spare  # the spare was handed the model
        assert title_of(spare) == "llama-router child: second"
