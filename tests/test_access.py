"""Who may reach the router, from where, with which key: a real router, loopback only.

A web page must not reach it by DNS rebinding (the Host check) nor forge a state-changing
request with a form (JSON only); configs, which may hold secrets, are for admin keys; config
writes without an admin key are refused off loopback; keys may come from files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.edge.access import HostCheck, host_name, is_loopback
from tests.processes import RouterProcess, running_router

ENV_VALUE = "sk-backend-secret-0123"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an empty models/ and a conf.d/ holding one 'command' model with a secret
    in its environment (it is never started)."""
    root = tmp_path_factory.mktemp("access")
    (root / "models").mkdir()
    (root / "conf.d").mkdir()
    (root / "conf.d" / "backend.toml").write_text(
        'command = ["backend-server", "--port", "{port}"]\n'
        f'[env]\nBACKEND_TOKEN = "{ENV_VALUE}"\n'
    )
    (root / "cors_server.py").write_text(CORS_SERVER)
    (root / "conf.d" / "cors.toml").write_text(
        f'command = [{sys.executable!r}, "../cors_server.py", "{{port}}"]\n'
    )
    return root


CORS_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def _send(self):
        body = json.dumps({"object": "chat.completion", "choices": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # As llama-server does: any origin may read the answer.
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", "*"))
        self.send_header("Access-Control-Allow-Credentials", "true")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send()

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def router_in(site: Path, *args: str) -> running_router:  # type: ignore[valid-type]
    return running_router(site / "models", *args, cwd=site)


@pytest.fixture(scope="module")
def router(site: Path) -> Iterator[RouterProcess]:
    """No keys, as on a developer's machine: the Host and JSON rules are all that protect it."""
    with router_in(site, "--allowed-host", "router.lan") as running:
        yield running


def port_of(router: RouterProcess) -> str:
    return router.base_url.rsplit(":", 1)[1]


# ---- the Host header: no DNS rebinding ------------------------------------------------------


@pytest.mark.parametrize("path", ["/models", "/v1/models", "/props", "/models/backend/config"])
def test_a_foreign_host_name_is_refused_on_every_route(router: RouterProcess, path: str) -> None:
    response = httpx.get(
        router.base_url + path, headers={"Host": f"evil.example:{port_of(router)}"}, timeout=10
    )
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert "'evil.example:" in message and "--allowed-host" in message
    assert ENV_VALUE not in response.text


def test_a_foreign_host_cannot_change_state_either(router: RouterProcess) -> None:
    response = httpx.post(
        f"{router.base_url}/models/reload", json={}, headers={"Host": "evil.example"}, timeout=10
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]", "router.lan", "Router.LAN", None]
)
def test_the_router_answers_its_own_names(router: RouterProcess, host: str | None) -> None:
    headers = {} if host is None else {"Host": f"{host}:{port_of(router)}"}
    response = httpx.get(f"{router.base_url}/models", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    if host is not None:
        bare = httpx.get(f"{router.base_url}/models", headers={"Host": host}, timeout=10)
        assert bare.status_code == 200


def test_health_answers_any_host(router: RouterProcess) -> None:
    response = httpx.get(f"{router.base_url}/health", headers={"Host": "evil.example"}, timeout=10)
    assert response.status_code == 200


def test_host_check_rules() -> None:
    local = HostCheck.for_address("127.0.0.1", ["Router.lan."])
    assert local.allows("router.lan:8080") and local.allows("127.0.0.2")
    assert local.allows("[0:0::1]:80") and local.allows(None)
    for header in ("192.0.2.7", "evil.example", "", "router.lan.evil", "[::1", "a:b:c", "x y"):
        assert not local.allows(header), header
    everywhere = HostCheck.for_address("0.0.0.0")
    assert everywhere.allows("192.0.2.7:8080") and everywhere.allows("[2001:db8::1]")
    assert not everywhere.allows("evil.example")
    named = HostCheck.for_address("192.0.2.7")
    assert named.allows("192.0.2.7") and not named.allows("192.0.2.8")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.7")
    assert host_name("example.com:80") is None  # --allowed-host takes no port


# ---- JSON only where state changes: no forged forms -----------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/models/load"),
        ("POST", "/models/unload"),
        ("POST", "/models/reload"),
        ("PUT", "/models/backend/config"),
        ("PATCH", "/models/backend/config"),
        ("DELETE", "/models/backend/config"),
    ],
)
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
def test_state_changing_routes_refuse_what_a_web_form_can_send(
    router: RouterProcess, method: str, path: str, content_type: str
) -> None:
    response = httpx.request(
        method,
        router.base_url + path,
        content=b"model=backend",
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_a_post_without_a_content_type_is_refused(router: RouterProcess) -> None:
    # What fetch(url, {method: "POST"}) sends from any page, without asking the router.
    response = httpx.post(f"{router.base_url}/models/reload", timeout=10)
    assert response.status_code == 415


def test_json_bodies_pass(router: RouterProcess) -> None:
    reload = httpx.post(f"{router.base_url}/models/reload", json={}, timeout=10)
    assert reload.json() == {"success": True}
    charset = httpx.post(
        f"{router.base_url}/models/unload",
        content=b'{"model": "nothing-here"}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
        timeout=10,
    )
    assert charset.status_code == 404  # past the media type check, to the model lookup
    delete = httpx.delete(f"{router.base_url}/models/backend/config", timeout=10)
    assert delete.status_code == 403  # a DELETE needs no body; it is refused for writes off
    assert "--allow-config-writes" in delete.json()["error"]["message"]


def test_no_page_of_another_origin_can_read_an_answer(router: RouterProcess) -> None:
    # A text/plain POST needs no CORS preflight: any page may send it. The backend allows
    # every origin to read its answer; the router must not pass that on.
    response = httpx.post(
        f"{router.base_url}/v1/chat/completions",
        content=json.dumps({"model": "cors", "messages": []}),
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert not [name for name in response.headers if name.lower().startswith("access-control")]
    httpx.post(f"{router.base_url}/models/unload", json={"model": "cors"}, timeout=10)


# ---- configs are for admins; /models never shows an environment -----------------------------


def test_reading_a_config_needs_the_admin_key(site: Path) -> None:
    with router_in(site, "--api-key", "user", "--admin-api-key", "admin") as router:
        url = f"{router.base_url}/models/backend/config"
        as_user = httpx.get(url, headers={"Authorization": "Bearer user"}, timeout=10)
        assert as_user.status_code == 403
        assert "admin key" in as_user.json()["error"]["message"]
        assert ENV_VALUE not in as_user.text
        as_admin = httpx.get(url, headers={"Authorization": "Bearer admin"}, timeout=10)
        assert as_admin.status_code == 200
        assert as_admin.json()["env"] == {"BACKEND_TOKEN": ENV_VALUE}
        for key in ("user", "admin"):
            listing = httpx.get(
                f"{router.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
            )
            assert "backend" in listing.text and ENV_VALUE not in listing.text


def test_api_keys_only_leave_no_one_able_to_read_configs(site: Path) -> None:
    with router_in(site, "--api-key", "user") as router:
        response = httpx.get(
            f"{router.base_url}/models/backend/config",
            headers={"Authorization": "Bearer user"},
            timeout=10,
        )
        assert response.status_code == 403


def test_admin_key_from_a_file_stays_out_of_the_command_line(site: Path, tmp_path: Path) -> None:
    keys = tmp_path / "admin-keys"
    keys.write_text("# admins\n\n  admin-from-file  \r\n")
    keys.chmod(0o600)
    users = tmp_path / "user-keys"
    users.write_text("user-from-file\n")
    users.chmod(0o644)
    with router_in(site, "--api-key-file", str(users), "--admin-api-key-file", str(keys)) as router:
        url = f"{router.base_url}/models/backend/config"
        as_admin = httpx.get(url, headers={"Authorization": "Bearer admin-from-file"}, timeout=10)
        assert as_admin.status_code == 200
        as_user = httpx.get(url, headers={"Authorization": "Bearer user-from-file"}, timeout=10)
        assert as_user.status_code == 403
        comment = httpx.get(url, headers={"Authorization": "Bearer # admins"}, timeout=10)
        assert comment.status_code == 401
        command_line = Path(f"/proc/{router.process.pid}/cmdline").read_bytes()
        assert b"admin-from-file" not in command_line
        assert f"--api-key-file {users} may be read by other users" in router.stderr_text()
        assert "--admin-api-key-file" not in router.stderr_text()


def run_to_exit(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``llama-router serve`` that is expected not to start; bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "router", "serve", "--models-dir", "models", "--port", "0", *args],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("flag", ["--api-key-file", "--admin-api-key-file"])
def test_a_key_file_without_keys_is_refused(site: Path, tmp_path: Path, flag: str) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n\n")
    result = run_to_exit(site, flag, str(empty))
    assert result.returncode == 2
    assert f"{flag} {empty} holds no key" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_config_writes_without_an_admin_key_need_a_loopback_address(site: Path, host: str) -> None:
    # Refused before it binds anything: nothing listens beyond loopback, even for a moment.
    result = run_to_exit(site, "--allow-config-writes", "--host", host)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error: --allow-config-writes on --host" in lines[0]
    assert "--admin-api-key" in lines[0] and "run programs" in lines[0]
    with_user_keys = run_to_exit(site, "--allow-config-writes", "--host", host, "--api-key", "u")
    assert with_user_keys.returncode == 2


def test_the_help_says_what_the_admin_key_can_do() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "--admin-api-key-file" in result.stdout
    assert "LD_PRELOAD" in result.stdout and "SECURITY.md" in result.stdout
