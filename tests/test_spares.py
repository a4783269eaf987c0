"""Spare children (``--spares N``): N wait, already started, for the next load; one used is
replaced at once, so back-to-back loads find one; ``GET /models`` shows what each costs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.errors import SettingsError
from router.settings import RouterSettings
from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama

WAIT_S = 30


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("spares")
    for seed, name in enumerate(("a", "b")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed, context_length=512)
    return folder


def spares(router: RouterProcess) -> list[dict[str, int | None]]:
    listed: list[dict[str, int | None]] = httpx.get(
        f"{router.base_url}/models", timeout=WAIT_S
    ).json()["spares"]
    return listed


def complete(router: RouterProcess, model: str) -> None:
    response = httpx.post(
        f"{router.base_url}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 1},
        timeout=WAIT_S,
    )
    assert response.status_code == 200, response.text


def test_the_spares_asked_for_wait_and_are_replaced_once_used(two_models: Path) -> None:
    with running_router(two_models, "-c", "512", "--spares", "2", "--models-max", "1") as router:
        wait_until(lambda: len(spares(router)) == 2, "two spares have started")
        before = {entry["pid"] for entry in spares(router)}
        complete(router, "a")
        assert router.child_pids()["a"] in before  # the load went to a spare
        wait_until(lambda: len(spares(router)) == 2, "the used spare is replaced")
        complete(router, "b")  # a swap: it finds a spare too
        assert router.child_pids()["b"] in before | {entry["pid"] for entry in spares(router)}
        wait_until(
            lambda: all(entry["rss_mib"] for entry in spares(router)), "their memory is shown"
        )
        assert "handed to a spare child" in router.stderr_text()


def test_no_spares_when_turned_off(two_models: Path) -> None:
    with running_router(two_models, "-c", "512", "--spares", "0") as router:
        complete(router, "a")
        assert spares(router) == []
        assert "handed to a spare child" not in router.stderr_text()


def test_a_spare_count_out_of_range_is_refused() -> None:
    with pytest.raises(SettingsError, match="--spares"):
        RouterSettings(spares=-1)
