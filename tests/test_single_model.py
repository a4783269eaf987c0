"""``llama-router serve -m FILE.gguf``: one model and no router's folders, as llama-server -m
serves it: listed alone (its id the file's name, or ``--alias``), loaded at start, pinned,
and answering whatever model a request names."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from router.errors import SettingsError
from router.settings import RouterSettings
from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama


def listed(router: RouterProcess) -> list[dict[str, object]]:
    data: list[dict[str, object]] = httpx.get(f"{router.base_url}/models").json()["data"]
    return data


def wait_loaded(router: RouterProcess, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while listed(router)[0]["status"]["value"] != "loaded":  # type: ignore[index]
        assert time.monotonic() < deadline, "the -m model was not loaded at start"
        time.sleep(0.05)


def test_m_serves_one_model_whatever_a_request_names(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny-q8.gguf"
    model.parent.mkdir()
    write_tiny_llama(model)
    write_tiny_llama(tmp_path / "models" / "other.gguf", seed=1)  # a neighbour: not listed
    with running_router(None, "-m", str(model), "-c", "256", cwd=tmp_path) as router:
        wait_loaded(router)  # nobody asked for it: loaded at start
        [entry] = listed(router)
        assert entry["id"] == "tiny-q8"
        assert entry["pinned"] is True
        client = openai.OpenAI(base_url=router.openai_base_url, api_key="none", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-q8"]
        for name in ("tiny-q8", "gpt-4o", "other"):
            answer = client.completions.create(model=name, prompt="hi", max_tokens=2)
            assert answer.choices[0].text is not None
        chat = client.chat.completions.create(
            model="anything", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert chat.choices[0].message is not None


def test_alias_names_the_m_model(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    write_tiny_llama(model)
    args = ("-m", str(model), "--alias", "my-model", "-c", "256")
    with running_router(None, *args, cwd=tmp_path) as router:
        assert [entry["id"] for entry in listed(router)] == ["my-model"]


def test_m_with_a_models_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(SettingsError, match="-m serves one model"):
        RouterSettings(model_file=model, models_dirs=(tmp_path,))
    with pytest.raises(SettingsError, match="no such file"):
        RouterSettings(model_file=tmp_path / "missing.gguf")
