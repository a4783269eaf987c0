"""Children that crash or fail to load, and a router that dies: nothing hangs, nothing leaks."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import pid_is_alive, running_router
from tests.test_router_e2e import LONG_STREAM, statuses, wait_until
from tests.tiny_models import write_tiny_llama, write_truncated_gguf


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("supervised")
    write_tiny_llama(folder / "good.gguf", context_length=65536)
    write_tiny_llama(folder / "other.gguf", seed=4)
    write_truncated_gguf(folder / "broken.gguf", folder / "good.gguf")
    return folder


def model_entry(base_url: str, model: str) -> dict[str, object]:
    data = httpx.get(f"{base_url}/models").json()["data"]
    entry: dict[str, object] = next(e for e in data if e["id"] == model)
    return entry


def socket_path(base_url: str, model: str) -> Path:
    """Where ``model``'s child listens: its command line's ``--unix-socket``."""
    args = model_entry(base_url, model)["status"]["args"]  # type: ignore[index]
    return Path(args[args.index("--unix-socket") + 1])


def test_child_killed_mid_stream_ends_the_stream_with_an_error_then_reloads(
    models: Path,
) -> None:
    with running_router(models) as router:
        with httpx.stream(
            "POST",
            f"{router.base_url}/v1/completions",
            json={**LONG_STREAM, "model": "good"},
            timeout=30,
        ) as response:
            lines = response.iter_lines()
            next(lines)
            os.kill(router.child_pids()["good"], signal.SIGKILL)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest, "the stream ended without a word"
        last = json.loads(rest[-1][len("data: ") :])
        assert "crashed" in last["error"]["message"]
        wait_until(lambda: statuses(router)["good"] == "unloaded", "the crash is noticed")
        status = model_entry(router.base_url, "good")["status"]
        assert status["failed"] is True  # type: ignore[index]
        assert status["exit_code"] == -signal.SIGKILL  # type: ignore[index]
        again = httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "good", "prompt": "x", "max_tokens": 2},
            timeout=30,
        )
        assert again.status_code == 200
        assert statuses(router)["good"] == "loaded"
        assert "failed" not in model_entry(router.base_url, "good")["status"]  # type: ignore[operator]


def test_load_failure_reaches_the_waiters_then_backs_off(models: Path) -> None:
    with running_router(models) as router:
        first = httpx.post(
            f"{router.base_url}/v1/completions", json={"model": "broken", "prompt": "x"}, timeout=30
        )
        assert first.status_code == 503
        assert "not within the file bounds" in first.json()["error"]["message"]
        status = model_entry(router.base_url, "broken")["status"]
        assert status["failed"] is True  # type: ignore[index]
        assert status["exit_code"] == 1  # type: ignore[index]
        second = httpx.post(
            f"{router.base_url}/v1/completions", json={"model": "broken", "prompt": "x"}, timeout=30
        )
        assert second.status_code == 503  # retried once at once, failed again
        third = httpx.post(
            f"{router.base_url}/v1/completions", json={"model": "broken", "prompt": "x"}, timeout=30
        )
        assert "failed 2 times in a row" in third.json()["error"]["message"]
        assert router.stderr_text().count("loading model broken") == 2  # no hot loop
        ok = httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "other", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
        assert ok.status_code == 200  # other models are untouched


def test_router_sigkill_leaves_no_child_behind(models: Path) -> None:
    with running_router(models) as router:
        for model in ("good", "other"):
            httpx.post(
                f"{router.base_url}/v1/completions",
                json={"model": model, "prompt": "x", "max_tokens": 1},
                timeout=30,
            )
        assert len(router.child_pids()) == 2
        from tests.processes import _children_of

        wait_until(lambda: len(_children_of(router.process.pid)) == 3, "a spare is up too")
        children = [pid for pid, _ in _children_of(router.process.pid)]
        router.process.send_signal(signal.SIGKILL)
        router.process.wait(timeout=5)
        deadline = time.monotonic() + 2.0
        while any(pid_is_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [pid for pid in children if pid_is_alive(pid)]


def test_router_sigterm_stops_children_gracefully_and_exits(models: Path) -> None:
    with running_router(models) as router:
        httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "good", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
        children = list(router.child_pids().values())
        socket_dir = socket_path(router.base_url, "good").parent
        router.process.send_signal(signal.SIGTERM)
        assert router.process.wait(timeout=30) == 0
        assert not [pid for pid in children if pid_is_alive(pid)]
        wait_until(lambda: "[good] stopping" in router.stderr_text(), "the stop is logged")
        assert not socket_dir.exists()  # the private runtime directory is removed


def test_runtime_directory_is_private(models: Path) -> None:
    with running_router(models) as router:
        httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "good", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
        served_at = socket_path(router.base_url, "good")
        assert served_at.parent.stat().st_mode & 0o777 == 0o700
        assert served_at.stat().st_mode & 0o777 == 0o600


def test_swapping_models_leaks_no_file_descriptors_or_processes(models: Path) -> None:
    with running_router(models, "--models-max", "1") as router:
        fd_dir = Path(f"/proc/{router.process.pid}/fd")

        def swap(rounds: int) -> None:
            for _ in range(rounds):
                for model in ("good", "other"):
                    response = httpx.post(
                        f"{router.base_url}/v1/completions",
                        json={"model": model, "prompt": "x", "max_tokens": 1},
                        timeout=30,
                    )
                    assert response.status_code == 200

        def settled_fd_count() -> int:
            """The fewest open over a second: a health check's socket, or the pipes of a
            child still exiting, come and go; a leak stays."""
            counts = []
            for _ in range(10):
                counts.append(len(list(fd_dir.iterdir())))
                time.sleep(0.1)
            return min(counts)

        swap(2)  # warm up: imports, the HTTP connection pool
        before = settled_fd_count()
        swap(4)
        after = settled_fd_count()
        assert after <= before
        assert len(router.child_pids()) == 1


def test_a_load_goes_to_the_waiting_spare_child(models: Path) -> None:
    from tests.processes import _children_of

    with running_router(models) as router:
        httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "good", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )

        def spares() -> list[int]:
            """Children waiting as spares: started with --spare, serving no model."""
            serving = set(router.child_pids().values())
            return [
                pid for pid, model in _children_of(router.process.pid)
                if model is None and pid not in serving
            ]  # fmt: skip

        wait_until(lambda: len(spares()) == 1, "a spare waits")
        spare = spares()[0]
        title = Path(f"/proc/{spare}/cmdline")
        wait_until(lambda: title.read_bytes().startswith(b"llama-router child: (spare)\0"), "ps")
        httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "other", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
        assert router.child_pids()["other"] == spare  # the spare became "other"
        wait_until(lambda: len(spares()) == 1 and spares()[0] != spare, "a new spare waits")
        everyone = [pid for pid, _ in _children_of(router.process.pid)]
        router.process.send_signal(signal.SIGTERM)
        assert router.process.wait(timeout=30) == 0
        assert not [pid for pid in everyone if pid_is_alive(pid)]  # the spare exits too
