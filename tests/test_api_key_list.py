"""``--api-key k1,k2`` holds two keys, as llama-server splits it (LLAMA_API_KEY too)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.processes import running_router


def test_comma_separated_api_keys_are_each_a_key(tmp_path: Path) -> None:
    with running_router(tmp_path, "--api-key", "k1,k2", "--api-key", "k3") as router:
        url = f"{router.base_url}/v1/models"
        for key in ("k1", "k2", "k3"):
            answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, key
        for wrong in ("k1,k2", None):
            headers = {"Authorization": f"Bearer {wrong}"} if wrong else {}
            assert httpx.get(url, headers=headers).status_code == 401
