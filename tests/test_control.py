"""``llama-router ps``, ``load``, ``unload``, ``logs`` and ``reload`` against a real router on
tiny models: what they print, what they wait for, and their exit status."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.cli import main
from router.control import default_url, format_table
from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama, write_truncated_gguf

KEY = "control-test-key"
FOLLOW_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("control")
    write_tiny_llama(folder / "alpha.gguf")
    write_tiny_llama(folder / "beta.gguf", seed=1)
    write_truncated_gguf(folder / "broken.gguf", folder / "alpha.gguf")
    return folder


@pytest.fixture(scope="module")
def router(models: Path) -> Iterator[RouterProcess]:
    with running_router(models, "--api-key", KEY, "--spares", "0") as router:
        yield router


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The key in the environment, as a person sets it; no other LLAMA_ROUTER_* setting."""
    for name in list(os.environ):
        if name.startswith("LLAMA_ROUTER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLAMA_ROUTER_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status_of(router: RouterProcess, model: str) -> str:
    answer = httpx.get(
        f"{router.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    entry = next(e for e in answer.json()["data"] if e["id"] == model)
    value: str = entry["status"]["value"]
    return value


def test_ps_prints_one_row_per_model_and_json_for_scripts(
    router: RouterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ps", "--url", router.base_url)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["MODEL", "STATUS", "PID", "IN", "FLIGHT", "LAST", "USED", "MEMORY",
                              "REASON"]  # fmt: skip
    by_model = {row.split()[0]: row.split() for row in rows}
    assert by_model["alpha"][1] in ("unloaded", "loaded")
    assert set(by_model) >= {"alpha", "beta", "broken"}

    code, out, _ = run(capsys, "ps", "--json", "--url", router.base_url)
    assert code == 0
    assert {"alpha", "beta", "broken"} <= {entry["id"] for entry in json.loads(out)["data"]}


def test_load_returns_once_the_model_is_loaded_and_unload_once_it_is_unloaded(
    router: RouterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "load", "beta", "--url", router.base_url)
    assert (code, err) == (0, "")
    assert status_of(router, "beta") == "loaded"  # at once: the command waited
    assert out.startswith("beta: loaded (pid ")

    code, out, _ = run(capsys, "ps", "--url", router.base_url)
    row = next(line.split() for line in out.splitlines() if line.startswith("beta "))
    assert row[1] == "loaded" and row[2].isdigit()

    code, out, err = run(capsys, "unload", "beta", "--url", router.base_url)
    assert (code, err) == (0, "")
    assert status_of(router, "beta") == "unloaded"
    assert out == "beta: unloaded\n"


def test_a_failed_load_exits_1_with_the_reason(
    router: RouterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "load", "broken", "--url", router.base_url, "--timeout", "60")
    assert code == 1
    assert err.startswith("llama-router load: broken did not load: ")
    assert "exit code 1" in err


def test_an_unknown_model_exits_1_with_the_routers_message(
    router: RouterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = httpx.post(
        f"{router.base_url}/models/load",
        json={"model": "nope"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    message = answer.json()["error"]["message"]
    for waiting in ([], ["--no-wait"]):
        code, _, err = run(capsys, "load", "nope", *waiting, "--url", router.base_url)
        assert code == 1
        assert err == f"llama-router load: {message}\n"


def test_the_key_comes_from_the_environment(
    router: RouterProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLAMA_ROUTER_API_KEY")
    code, _, err = run(capsys, "ps", "--url", router.base_url)
    assert code == 1
    assert "invalid or missing API key" in err
    assert "LLAMA_ROUTER_API_KEY" in err

    key_file = Path("keys")
    key_file.write_text(f"# the router's key\n{KEY}\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("LLAMA_ROUTER_API_KEY_FILE", str(key_file))
    assert run(capsys, "ps", "--url", router.base_url)[0] == 0


def test_the_default_url_is_where_serve_would_listen(
    router: RouterProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = router.base_url.rsplit(":", 1)[1]
    monkeypatch.setenv("LLAMA_ROUTER_HOST", "0.0.0.0")  # bound everywhere, reached on loopback
    monkeypatch.setenv("LLAMA_ROUTER_PORT", port)
    assert run(capsys, "ps")[0] == 0


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),
        ("::1", "http://[::1]:8080"),
        ("192.0.2.7", "http://192.0.2.7:8080"),
        ("router.example", "http://router.example:8080"),
    ],
)
def test_the_default_url_calls_an_any_address_bind_on_loopback(
    host: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_ROUTER_HOST", host)
    assert default_url() == url


def test_no_router_at_the_url_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, not listening: refused
        code, out, err = run(capsys, "ps", "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"llama-router ps: no router answers at {url} ")


def test_reload_lists_a_model_added_since(
    router: RouterProcess, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_llama(models / "gamma.gguf", seed=3)
    code, out, _ = run(capsys, "ps", "--url", router.base_url)
    assert "gamma" not in out
    code, out, _ = run(capsys, "reload", "--url", router.base_url)
    assert code == 0
    code, out, _ = run(capsys, "ps", "--url", router.base_url)
    assert any(line.startswith("gamma ") for line in out.splitlines())


def test_logs_follows_a_models_lines_and_status_then_prints_its_recent_ones(
    router: RouterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "router", "logs", "-f", "alpha", "--url", router.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LLAMA_ROUTER_API_KEY": KEY},
    )
    seen: list[str] = []
    is_following, is_loaded, has_own_line = threading.Event(), threading.Event(), threading.Event()

    def read_notes() -> None:
        assert follower.stderr is not None
        for line in follower.stderr:
            if line.startswith("-- following alpha"):
                is_following.set()

    def read_lines() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            seen.append(line)
            if line.startswith("-- alpha: status_change ") and "status=loaded" in line:
                is_loaded.set()
            elif not line.startswith("-- "):
                has_own_line.set()  # the child's output, not the router's note

    readers = [threading.Thread(target=read, daemon=True) for read in (read_notes, read_lines)]
    for reader in readers:
        reader.start()
    try:
        assert is_following.wait(FOLLOW_TIMEOUT_S), "logs -f never subscribed"
        assert run(capsys, "load", "alpha", "--url", router.base_url)[0] == 0
        assert is_loaded.wait(FOLLOW_TIMEOUT_S), f"no status event followed: {seen}"
        assert has_own_line.wait(FOLLOW_TIMEOUT_S), f"no line of the model's own: {seen}"
        model_lines = [line for line in seen if not line.startswith("-- ")]
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 130
        for reader in readers:
            reader.join(timeout=5)
    code, out, _ = run(capsys, "logs", "alpha", "--url", router.base_url)
    assert code == 0
    assert model_lines[0] in out.splitlines(keepends=True)


def test_logs_follow_ends_with_exit_2_when_the_router_goes_away(models: Path) -> None:
    with running_router(models, "--spares", "0") as router:
        follower = subprocess.Popen(
            [sys.executable, "-m", "router", "logs", "-f", "alpha", "--url", router.base_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stderr is not None
        try:
            assert follower.stderr.readline().startswith("-- following alpha")
        except BaseException:
            follower.kill()
            raise
    try:
        assert follower.wait(timeout=FOLLOW_TIMEOUT_S) == 2
    finally:
        follower.kill()
    last = follower.stderr.read().splitlines()[-1]  # it may have been mid-request, too
    assert last.startswith("llama-router logs: ") and router.base_url in last, last


def test_the_table_reads_memory_last_use_failures_and_spares() -> None:
    models = {
        "data": [
            {"id": "a", "in_flight": 2, "last_used": 1000.0, "memory": 310 * 2**20,
             "status": {"value": "loaded", "pid": 41}},
            {"id": "c", "in_flight": 0, "last_used": 0, "memory": {"rss": 2**30},
             "status": {"value": "loading"}},
            {"id": "b", "in_flight": 0,
             "status": {"value": "unloaded", "failed": True, "exit_code": 1,
                        "error": "not a GGUF file:\n  bad magic"}},
        ],
        "spares": [{"pid": 42, "rss_mib": 61, "is_ready": True, "models_served": 0},
                   {"pid": 43, "rss_mib": 20, "is_ready": False, "is_paused": True}],
    }  # fmt: skip
    lines = format_table(models, now=1000.0 + 125).splitlines()
    assert lines[1].split() == ["a", "loaded", "41", "2", "2m", "ago", "310", "MiB"]
    assert lines[2].split() == ["c", "loading", "-", "0", "-", "1024", "MiB"]
    assert lines[3].split() == ["b", "failed", "-", "0", "-", "-", "not", "a", "GGUF", "file:",
                                "bad", "magic"]  # fmt: skip
    assert lines[4].split() == ["(spare)", "ready", "42", "-", "-", "61", "MiB"]
    assert lines[5].split() == ["(spare)", "paused", "43", "-", "-", "20", "MiB"]


def test_pin_and_unpin_keep_a_model_and_ps_shows_it(
    router: RouterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code, out, _ = run(capsys, "pin", "alpha", "--url", router.base_url)
        assert (code, out) == (0, "alpha: pinned\n")
        code, out, _ = run(capsys, "ps", "--url", router.base_url)
        row = next(line.split() for line in out.splitlines() if line.startswith("alpha "))
        assert row[1].endswith(",pinned")
        code, out, _ = run(capsys, "ps", "--json", "--url", router.base_url)
        assert next(e for e in json.loads(out)["data"] if e["id"] == "alpha")["pinned"] is True
    finally:
        code, out, _ = run(capsys, "unpin", "alpha", "--url", router.base_url)
    assert (code, out) == (0, "alpha: not pinned\n")
    code, out, _ = run(capsys, "ps", "--url", router.base_url)
    assert ",pinned" not in out
    code, _, err = run(capsys, "pin", "nope", "--url", router.base_url)
    assert code == 1 and "'nope' not found" in err
