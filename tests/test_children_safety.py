"""Children that hang, cannot start, collide or leak secrets never hurt other models or the
router (issue: safe in front of many users)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.processes.own_children import socket_name
from tests.processes import pid_is_alive, running_router
from tests.test_router_e2e import LONG_STREAM, statuses, wait_until
from tests.tiny_models import write_tiny_llama

# An OpenAI-ish server that answers GET /env with its environment; listens on a TCP port
# (argv[1] a number) or a Unix socket (argv[1] a path).
ENV_STUB = textwrap.dedent("""
    import json, os, socketserver, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"status": "ok", "env": dict(os.environ)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    where = sys.argv[1]
    if where.isdigit():
        ThreadingHTTPServer(("127.0.0.1", int(where)), Handler).serve_forever()
    else:
        UnixServer(where, Handler).serve_forever()
""")

# A plugin whose child_launch puts a NUL into the environment: the spawn itself fails.
NUL_PLUGIN = textwrap.dedent("""
    from router import hookimpl

    @hookimpl
    def child_launch(model, argv, env):
        if model.id == "doomed":
            env["BROKEN"] = "a\\x00b"
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("safety")
    for seed, name in enumerate(("alpha", "beta", "doomed")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed, context_length=65536)
    return folder


def complete(base_url: str, model: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 2},
        timeout=timeout,
    )


def model_status(base_url: str, model: str, key: str = "") -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = httpx.get(f"{base_url}/models", headers=headers, timeout=10).json()["data"]
    status: dict[str, object] = next(e for e in data if e["id"] == model)["status"]
    return status


@pytest.fixture
def stopped_pids() -> Iterator[list[int]]:
    """Processes a test stopped with SIGSTOP: resumed afterwards, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_is_alive(pid):
            os.kill(pid, signal.SIGCONT)


def test_a_hung_child_is_noticed_killed_and_restarted(
    models: Path, stopped_pids: list[int]
) -> None:
    with running_router(
        models, "--models-max", "1", "--health-interval", "0.5", "--health-misses", "2",
        "-c", "65536",
    ) as router:  # fmt: skip
        assert complete(router.base_url, "alpha").status_code == 200
        pid = router.child_pids()["alpha"]
        with httpx.stream(
            "POST",
            f"{router.base_url}/v1/completions",
            json={**LONG_STREAM, "model": "alpha"},
            timeout=60,
        ) as stream:
            lines = stream.iter_lines()
            next(lines)
            os.kill(pid, signal.SIGSTOP)
            stopped_pids.append(pid)
            # The stream does not hang: it ends with an error event once the child is killed.
            rest = [line for line in lines if line.startswith("data: ")]
        assert "error" in json.loads(rest[-1].removeprefix("data: "))
        wait_until(lambda: not pid_is_alive(pid), "the hung child is killed")
        status = model_status(router.base_url, "alpha")
        assert status["failed"] is True
        assert "not responding" in str(status["error"])
        # With --models-max 1 the slot is free again: another model loads...
        assert complete(router.base_url, "beta").status_code == 200
        # ...and the next request for the hung one starts it anew.
        assert complete(router.base_url, "alpha").status_code == 200
        assert statuses(router)["alpha"] == "loaded"


def test_a_request_to_a_hung_idle_child_gets_an_error_not_silence(
    models: Path, stopped_pids: list[int]
) -> None:
    with running_router(models, "--health-interval", "0.5", "--health-misses", "2") as router:
        assert complete(router.base_url, "alpha").status_code == 200
        pid = router.child_pids()["alpha"]
        os.kill(pid, signal.SIGSTOP)
        stopped_pids.append(pid)
        response = complete(router.base_url, "alpha")
        # Either it reached the child before the kill (503: it did not answer) or after
        # (the restart serves it): never a hang.
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert "did not answer" in response.json()["error"]["message"]
        wait_until(lambda: not pid_is_alive(pid), "the hung child is killed")


def test_a_child_that_cannot_be_spawned_fails_its_model_only(models: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "nul_env.py"
    plugin.write_text(NUL_PLUGIN)
    with running_router(models, "--plugin", str(plugin)) as router:
        response = complete(router.base_url, "doomed")
        assert response.status_code == 503
        assert "cannot start its process" in response.json()["error"]["message"]
        status = model_status(router.base_url, "doomed")
        assert status["failed"] is True
        assert router.process.poll() is None  # the router lives on
        assert complete(router.base_url, "alpha").status_code == 200


def test_waiting_for_a_slot_has_a_deadline(models: Path) -> None:
    with running_router(
        models, "--models-max", "1", "--slot-timeout", "1", "-c", "65536"
    ) as router:
        with httpx.stream(
            "POST",
            f"{router.base_url}/v1/completions",
            json={**LONG_STREAM, "model": "alpha"},
            timeout=60,
        ) as stream:
            lines = stream.iter_lines()  # kept: a dropped iterator closes the stream
            assert next(lines).startswith("data: {")  # alpha is busy and holds the only slot
            response = complete(router.base_url, "beta")
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert "no slot freed" in response.json()["error"]["message"]
        assert complete(router.base_url, "beta").status_code == 200  # once alpha is idle


def test_socket_names_never_collide() -> None:
    ids = ["team:model", "team_model", "a b", "a_b", "x" * 100, "x" * 101, "é", "_"]
    names = {socket_name(model_id) for model_id in ids}
    assert len(names) == len(ids)
    assert all(len(name) <= 64 and "/" not in name for name in names)


def test_models_whose_ids_differ_in_punctuation_each_get_their_own_child(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "models").mkdir()
    for seed, (model_id, file) in enumerate((("team:model", "one"), ("team_model", "two"))):
        write_tiny_llama(tmp_path / "models" / f"{file}.gguf", seed=seed)
        (tmp_path / "conf.d" / f"{file}.toml").write_text(
            f'name = "{model_id}"\nmodel = "../models/{file}.gguf"\n'
        )
    with running_router(tmp_path / "models", "--conf-dir", str(tmp_path / "conf.d")) as router:
        for model_id in ("team:model", "team_model"):
            assert complete(router.base_url, model_id).status_code == 200
        for model_id, file in (("team:model", "one"), ("team_model", "two")):
            props = httpx.get(
                f"{router.base_url}/props", params={"model": model_id}, timeout=30
            ).json()
            assert props["model_path"].endswith(f"{file}.gguf")


def _command_model(tmp_path: Path, listen: str) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "stub.py").write_text(ENV_STUB)
    (tmp_path / "conf.d" / "stub.toml").write_text(
        f'command = [{sys.executable!r}, "../stub.py", "{listen}"]\n'
    )
    return tmp_path


def _stub_env(base_url: str) -> dict[str, str]:
    response = httpx.get(f"{base_url}/env", params={"model": "stub"}, timeout=30)
    assert response.status_code == 200, response.text
    env: dict[str, str] = response.json()["env"]
    return env


@pytest.mark.parametrize("listen", ["{port}", "{socket}"])
def test_children_never_see_the_routers_keys(tmp_path: Path, listen: str) -> None:
    site = _command_model(tmp_path, listen)
    secret_env = {"LLAMA_ROUTER_API_KEY": "k-user", "LLAMA_ROUTER_ADMIN_API_KEY": "k-admin"}
    os.environ.update(secret_env)
    try:
        with running_router(site / "models", "--conf-dir", str(site / "conf.d")) as router:
            headers = {"Authorization": "Bearer k-user"}
            response = httpx.get(
                f"{router.base_url}/env", params={"model": "stub"}, headers=headers, timeout=30
            )
            assert response.status_code == 200, response.text
            env = response.json()["env"]
            assert not [name for name in env if name.startswith("LLAMA_ROUTER_")]
            args = model_status(router.base_url, "stub", "k-user")["args"]
            assert any(str(arg).endswith(".sock") for arg in args) == (listen == "{socket}")  # type: ignore[attr-defined]
    finally:
        for name in secret_env:
            del os.environ[name]


# A command that does not listen itself: a process outside its group (as another local user's
# would be) takes the port the router gave it, and records whatever it receives.
THIEF = textwrap.dedent("""
    import os, socket, sys, time
    port, record = int(sys.argv[1]), sys.argv[2]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    if os.fork() == 0:
        os.setsid()  # a process group of its own: not the command's
        with open(record + ".pid", "w") as file:
            file.write(str(os.getpid()))
        listener.settimeout(15)
        try:
            while True:
                connection, _ = listener.accept()
                with open(record, "ab") as file:
                    file.write(connection.recv(65536) or b"(connected)")
                connection.close()
        except OSError:
            os._exit(0)
    listener.close()
    time.sleep(30)
""")


def test_a_port_held_by_a_stranger_gets_no_prompt(tmp_path: Path) -> None:
    site = _command_model(tmp_path, "{port}")
    (site / "thief.py").write_text(THIEF)
    record = tmp_path / "received"
    (site / "conf.d" / "stub.toml").write_text(
        f'command = [{sys.executable!r}, "../thief.py", "{{port}}", "{record}"]\n'
    )
    try:
        with running_router(site / "models", "--conf-dir", str(site / "conf.d")) as router:
            response = complete(router.base_url, "stub")
            assert response.status_code == 503
            assert "not its own" in response.json()["error"]["message"]
    finally:
        pid_file = Path(str(record) + ".pid")
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert not record.exists(), record.read_bytes()


def test_a_client_that_stops_reading_does_not_hold_its_model_for_ever(models: Path) -> None:
    with running_router(models, "--timeout", "2", "-c", "65536") as router:
        host, port = router.base_url.removeprefix("http://").split(":")
        body = json.dumps({**LONG_STREAM, "model": "alpha"}).encode()
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect((host, int(port)))
            reader.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_until(lambda: in_flight(router.base_url, "alpha") == 1, "the stream runs")
            # It reads nothing more: once every buffer is full, the router gives up on it.
            wait_until(lambda: in_flight(router.base_url, "alpha") == 0, "its slot is freed", 90)
            # Nor its connection: a shutdown does not wait for it for ever (Hypercorn sends
            # under a shield; the connection's own send deadline closes it).
            router.process.send_signal(signal.SIGTERM)
            router.process.wait(timeout=60)


def in_flight(base_url: str, model: str) -> int:
    data = httpx.get(f"{base_url}/models", timeout=10).json()["data"]
    count: int = next(e for e in data if e["id"] == model)["in_flight"]
    return count
