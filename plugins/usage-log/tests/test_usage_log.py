"""The usage-log plugin, loaded through its entry point into a real router."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from llama_router_usage_log import UsageLog
from tests.processes import running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama


def test_one_line_per_request_with_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny.gguf")
    log = tmp_path / "usage.jsonl"
    monkeypatch.setenv("LLAMA_ROUTER_USAGE_LOG", str(log))
    with running_router(models) as router:
        for stream in (False, True):
            httpx.post(
                f"{router.base_url}/v1/completions",
                timeout=30,
                json={
                    "model": "tiny",
                    "prompt": "x",
                    "max_tokens": 4,
                    "ignore_eos": True,
                    "stream": stream,
                    "stream_options": {"include_usage": True},
                },
            )
        httpx.post(
            f"{router.base_url}/v1/completions",
            timeout=30,
            json={"model": "tiny", "prompt": "x", "temperature": "hot"},
        )
        wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 3, "3 lines")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["completion_tokens"] for line in lines] == [4, 4, None]
    assert [line["status"] for line in lines] == [200, 200, 400]
    assert all(line["principal"] == "anonymous" for line in lines)
    assert all(line["latency_s"] > 0 for line in lines)


def test_rotation_by_size(tmp_path: Path) -> None:
    log = tmp_path / "u.jsonl"
    usage_log = UsageLog(log, max_bytes=25, backups=2)
    for number in range(10):
        usage_log.write(f"{number:09d}")
    usage_log.close()
    assert log.read_text() == "000000008\n000000009\n"  # two 10-byte lines fit in 25
    assert (tmp_path / "u.jsonl.1").read_text() == "000000006\n000000007\n"
    assert (tmp_path / "u.jsonl.2").read_text() == "000000004\n000000005\n"
    assert not (tmp_path / "u.jsonl.3").exists()


def test_max_bytes_zero_never_rotates(tmp_path: Path) -> None:
    log = tmp_path / "u.jsonl"
    usage_log = UsageLog(log, max_bytes=0, backups=2)
    for number in range(3):
        usage_log.write(f"{number}")
    usage_log.close()
    assert log.read_text() == "0\n1\n2\n"
    assert not (tmp_path / "u.jsonl.1").exists()


def test_no_backups_is_refused_rather_than_growing_forever(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LLAMA_ROUTER_USAGE_LOG_BACKUPS must be 1 or more"):
        UsageLog(tmp_path / "u.jsonl", max_bytes=25, backups=0)
