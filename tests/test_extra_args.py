"""Child arguments from clients: off by default, allowlisted when on."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.edge.extra_args import FALLBACK_MAX_CTX, ExtraArgLimits, checked_extra_args
from router.errors import InvalidField
from tests.processes import running_router
from tests.test_router_e2e import statuses, wait_until
from tests.tiny_models import write_tiny_llama

LIMITS = ExtraArgLimits(max_ctx=4096, max_threads=4)


def test_allowed_pairs_pass() -> None:
    assert checked_extra_args(["-c", "256", "--flash-attn", "off"], LIMITS) == (
        "-c", "256", "--flash-attn", "off",
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "/etc/passwd"],
        ["--unix-socket", "/tmp/x"],
        ["-c"],
        ["-c", "8192; rm -rf /"],
        ["-fa", "maybe"],
        "-c 256",
        [["-c", "1"]],
        ["-np", "999999999"],
        ["-c", "999999999"],
        ["-c", "4097"],
        ["-t", "4096"],
        ["-t", "0"],
        ["-c", "\u0662\u0665\u0666"],  # Arabic-Indic digits: \d takes them, int() too
        ["-c", "-1"],
        ["-c", "256", "--ctx-size", "512"],
    ],
)
def test_anything_else_is_refused_naming_args(args: object) -> None:
    with pytest.raises(InvalidField) as caught:
        checked_extra_args(args, LIMITS)
    assert caught.value.param == "args"


@pytest.fixture(scope="module")
def one_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("extra")
    write_tiny_llama(folder / "m.gguf")
    return folder


def test_extra_args_are_refused_unless_allowed(one_model: Path) -> None:
    with running_router(one_model) as router:
        response = httpx.post(
            f"{router.base_url}/models/load", json={"model": "m", "args": ["-c", "256"]}
        )
        assert response.status_code == 403
        assert "--models-allow-extra-args" in response.json()["error"]["message"]


def test_allowed_extra_args_reach_the_child(one_model: Path) -> None:
    with running_router(one_model, "--models-allow-extra-args") as router:
        bad = httpx.post(
            f"{router.base_url}/models/load",
            json={"model": "m", "args": ["--model", "/etc/passwd"]},
        )
        assert bad.status_code == 400
        good = httpx.post(
            f"{router.base_url}/models/load", json={"model": "m", "args": ["-c", "256"]}
        )
        assert good.json() == {"success": True}
        wait_until(lambda: statuses(router)["m"] == "loaded", "m is loaded")
        props = httpx.get(f"{router.base_url}/props", params={"model": "m"}).json()
        assert props["default_generation_settings"]["n_ctx"] == 256
        conflict = httpx.post(
            f"{router.base_url}/models/load", json={"model": "m", "args": ["-c", "512"]}
        )
        assert conflict.status_code == 409


def test_a_clients_args_last_only_for_the_load_it_asked_for(one_model: Path) -> None:
    with running_router(one_model, "--models-allow-extra-args", "-c", "512") as router:
        too_big = httpx.post(
            f"{router.base_url}/models/load", json={"model": "m", "args": ["-c", "999999"]}
        )
        assert too_big.status_code == 400
        assert "from 0 to" in too_big.json()["error"]["message"]
        good = httpx.post(
            f"{router.base_url}/models/load", json={"model": "m", "args": ["-c", "256"]}
        )
        assert good.json() == {"success": True}
        wait_until(lambda: statuses(router)["m"] == "loaded", "m is loaded")
        props = httpx.get(f"{router.base_url}/props", params={"model": "m"}).json()
        assert props["default_generation_settings"]["n_ctx"] == 256
        httpx.post(f"{router.base_url}/models/unload", json={"model": "m"})
        wait_until(lambda: statuses(router)["m"] == "unloaded", "m is unloaded")
        # Another user's request autoloads it: with the operator's settings, not the client's.
        props = httpx.get(f"{router.base_url}/props", params={"model": "m"}, timeout=60).json()
        assert props["default_generation_settings"]["n_ctx"] == 512


def test_trained_context_bounds_the_context_a_client_may_ask_for(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "short.gguf", context_length=1024)
    limits = ExtraArgLimits.for_model(model, {})
    assert limits.max_ctx == 1024
    assert ExtraArgLimits.for_model(model, {"ctx_size": 4096}).max_ctx == 4096
    with pytest.raises(InvalidField):
        checked_extra_args(["-c", "1025"], limits)


def test_an_unreadable_header_bounds_the_context_by_the_fallback(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "m.gguf", context_length=1024)
    model.write_bytes(model.read_bytes()[:100])  # cut inside the metadata
    assert ExtraArgLimits.for_model(model, {}).max_ctx == FALLBACK_MAX_CTX
