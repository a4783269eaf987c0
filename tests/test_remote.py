"""Models served elsewhere (router/models/remote.py): conf.d ``url`` models and peer routers.

End to end: two routers on loopback, one fronting the other, and a recording upstream (a
small HTTP server in this process) that keeps every request's headers, to prove which key
goes where.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from router.errors import ConfigInvalid, InvalidRequest, RouterFileError, Unavailable
from router.hooks.plugins import load_plugins
from router.models.confd import peer_from, read_model_file, read_router_file
from router.models.pool import ModelPool
from router.models.remote import RemoteUpstreams, remote_status, upstream_request
from router.models.scheduler import Status
from router.models.state import ModelState, UpstreamHealth
from router.spec import ModelSpec, Peer, Upstream
from tests.processes import RouterProcess, running_child, running_router
from tests.test_events_e2e import EventReader
from tests.test_router_e2e import wait_until

BACK_KEY = "back-secret-key-0123"
FRONT_KEY = "front-client-key-4567"
UPSTREAM_KEY = "upstream-secret-key-89ab"
BOUNDED_S = 20  # every wait for a router's answer


# ---- a recording upstream ---------------------------------------------------------------------


@dataclass
class Recorder:
    """What the upstream saw, and whether its health check fails."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    is_healthy: bool = True
    url: str = ""
    server: Any = None  # the ThreadingHTTPServer (a test may wrap its socket in TLS)


@contextmanager
def recording_upstream() -> Iterator[Recorder]:
    """An OpenAI-compatible stub on loopback that records each request's headers and body."""
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self, body: bytes = b"") -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            recorder.requests.append((self.path, headers, body))

        def do_GET(self) -> None:
            self._record()
            if self.path == "/health" and not recorder.is_healthy:
                self._send(503, {"error": {"message": "loading", "code": 503}})
            else:
                self._send(200, {"status": "ok", "object": "list", "data": [{"id": "up-model"}]})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self._record(body)
            model = json.loads(body).get("model")
            self._send(200, {
                "id": "stub-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "upstream says hi"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            })  # fmt: skip

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    recorder.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---- helpers ----------------------------------------------------------------------------------


def entries(router: RouterProcess, key: str | None = None) -> dict[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.get(f"{router.base_url}/models", headers=headers, timeout=BOUNDED_S)
    answer.raise_for_status()
    return {entry["id"]: entry for entry in answer.json()["data"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chat(router: RouterProcess, model: str, key: str, **extra: Any) -> Any:
    client = openai.OpenAI(
        base_url=router.openai_base_url, api_key=key, timeout=BOUNDED_S, max_retries=0
    )
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **extra
    )


def write_front_config(folder: Path, back_url: str) -> Path:
    """router.toml for a front router that lists the back one as 'back', with its key."""
    folder.mkdir(exist_ok=True)
    (folder / "conf.d").mkdir(exist_ok=True)
    config = folder / "router.toml"
    config.write_text(
        textwrap.dedent(f"""
            [[peers]]
            name = "back"
            url = "{back_url}"
            api_key_env = "TEST_BACK_KEY"
            connect_timeout = 2
        """)
    )
    return config


@pytest.fixture
def back_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The front router's environment holds the back one's key (and only it does)."""
    monkeypatch.setenv("TEST_BACK_KEY", BACK_KEY)
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)


# ---- two routers, one fronting the other ------------------------------------------------------


def test_front_lists_forwards_and_streams_the_back_routers_models(
    tiny_model: Path, tmp_path: Path, back_key_env: None
) -> None:
    with running_router(tiny_model.parent, "--api-key", BACK_KEY) as back:
        config = write_front_config(tmp_path / "front", back.base_url)
        with running_router(
            tmp_path / "front", "--config", str(config), "--api-key", FRONT_KEY,
            "--remote-interval", "0.5", "--spares", "0",
        ) as front:  # fmt: skip
            wait_until(lambda: "back/tiny" in entries(front, FRONT_KEY), "back/tiny is listed")
            entry = entries(front, FRONT_KEY)["back/tiny"]
            assert entry["status"]["value"] == "remote"
            assert entry["status"]["available"] is True
            assert entry["status"]["peer"] == "back"
            assert entry["status"]["health"]["ok"] is True

            answer = chat(front, "back/tiny", FRONT_KEY)
            assert answer.choices[0].message.content is not None

            stream = chat(front, "back/tiny", FRONT_KEY, stream=True)
            pieces = [chunk for chunk in stream if chunk.choices]
            assert pieces and pieces[-1].choices[0].finish_reason is not None

            # The pool never loads or unloads it: a clear 400, not a silent success.
            for action in ("load", "unload"):
                refused = httpx.post(
                    f"{front.base_url}/models/{action}",
                    json={"model": "back/tiny"},
                    headers={"Authorization": f"Bearer {FRONT_KEY}"},
                    timeout=BOUNDED_S,
                )
                assert refused.status_code == 400, refused.text
                assert "remote" in refused.json()["error"]["message"]

            listing = httpx.get(
                f"{front.base_url}/models",
                headers={"Authorization": f"Bearer {FRONT_KEY}"},
                timeout=BOUNDED_S,
            ).text
            assert BACK_KEY not in listing
        assert BACK_KEY not in front.stderr_text()


def test_front_survives_the_back_router_killed_and_restarted(
    tiny_model: Path, tmp_path: Path, back_key_env: None
) -> None:
    port = free_port()
    back_args = ("--api-key", BACK_KEY, "--port", str(port), "--spares", "0")
    config = write_front_config(tmp_path / "front", f"http://127.0.0.1:{port}")
    with running_router(tiny_model.parent, *back_args) as back, running_router(
        tmp_path / "front", "--config", str(config), "--api-key", FRONT_KEY,
        "--remote-interval", "0.3", "--spares", "0",
    ) as front:  # fmt: skip
        wait_until(lambda: "back/tiny" in entries(front, FRONT_KEY), "back/tiny is listed")
        assert chat(front, "back/tiny", FRONT_KEY).choices
        auth = {"Authorization": f"Bearer {FRONT_KEY}"}
        events = EventReader(f"{front.base_url}/models/sse", auth).start()

        os.killpg(back.process.pid, signal.SIGKILL)
        back.process.wait(timeout=BOUNDED_S)

        def is_unavailable() -> bool:
            return entries(front, FRONT_KEY)["back/tiny"]["status"]["available"] is False

        wait_until(is_unavailable, "back/tiny shows unavailable", timeout_s=BOUNDED_S)
        status = entries(front, FRONT_KEY)["back/tiny"]["status"]
        assert status["value"] == "remote"
        assert "peer 'back' did not answer" in status["reason"]
        assert f"127.0.0.1:{port}" in status["reason"]  # a refused or reset connection
        assert status["health"]["ok"] is False
        with pytest.raises(openai.InternalServerError) as refused:
            chat(front, "back/tiny", FRONT_KEY)
        assert refused.value.status_code == 503
        assert "unavailable" in refused.value.message
        gone = events.find("back/tiny", status="remote", available=False)  # live, for the page
        assert gone is not None and "did not answer" in gone["data"]["reason"], events.events

        with running_router(tiny_model.parent, *back_args):

            def is_available() -> bool:
                return entries(front, FRONT_KEY)["back/tiny"]["status"]["available"] is True

            wait_until(is_available, "back/tiny is available again", timeout_s=BOUNDED_S)
            assert chat(front, "back/tiny", FRONT_KEY).choices
            back_again = events.seen("back/tiny", status="remote", available=True)
            wait_until(back_again, "the event saying it is back", timeout_s=BOUNDED_S)


def test_reload_lists_a_peer_at_once_and_ps_shows_its_models(
    tiny_model: Path,
    tmp_path: Path,
    back_key_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.cli import main

    port = free_port()
    config = write_front_config(tmp_path / "front", f"http://127.0.0.1:{port}")
    with running_router(
        tmp_path / "front", "--config", str(config), "--api-key", FRONT_KEY,
        "--remote-interval", "3600", "--spares", "0",
    ) as front:  # fmt: skip
        wait_until(lambda: "peer back is unavailable" in front.stderr_text(), "the first try")
        with running_router(tiny_model.parent, "--api-key", BACK_KEY, "--port", str(port)):
            assert "back/tiny" not in entries(front, FRONT_KEY)  # not before an hour, unasked
            reload = httpx.get(
                f"{front.base_url}/models?reload=1",
                headers={"Authorization": f"Bearer {FRONT_KEY}"},
                timeout=BOUNDED_S,
            )
            assert reload.status_code == 200
            wait_until(lambda: "back/tiny" in entries(front, FRONT_KEY), "back/tiny is listed")

            monkeypatch.setenv("LLAMA_ROUTER_API_KEY", FRONT_KEY)
            capsys.readouterr()
            assert main(["ps", "--url", front.base_url]) == 0
            line = next(ln for ln in capsys.readouterr().out.splitlines() if "back/tiny" in ln)
            assert "remote" in line


def test_a_url_model_on_a_plain_child_and_on_a_recording_upstream(
    tiny_model: Path, tmp_path: Path, back_key_env: None
) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    with (
        running_child(tiny_model, "--ctx-size", "512", "--alias", "tiny") as child,
        recording_upstream() as upstream,
    ):
        (conf / "child.toml").write_text(f'url = "{child.base_url}"\nremote_model = "tiny"\n')
        (conf / "up.toml").write_text(
            f'url = "{upstream.url}"\nremote_model = "up-model"\n'
            'api_key_env = "TEST_UPSTREAM_KEY"\nconnect_timeout = 2\n'
        )
        with running_router(
            tiny_model.parent, "--conf-dir", str(conf), "--api-key", FRONT_KEY,
            "--models-max", "1", "--remote-interval", "0.3", "--spares", "0",
        ) as front:  # fmt: skip
            listed = entries(front, FRONT_KEY)
            assert listed["child"]["status"]["value"] == "remote"
            assert listed["up"]["status"]["value"] == "remote"
            assert chat(front, "child", FRONT_KEY).choices

            # A local model takes the one slot; remote ones never count against it.
            assert chat(front, "tiny", FRONT_KEY).choices
            answer = chat(front, "up", FRONT_KEY)
            assert answer.choices[0].message.content == "upstream says hi"
            # Nothing is loaded for it, so its access line says it waited for nothing.
            wait_until(lambda: 'model="up"' in front.stderr_text(), "its access line")
            line = next(ln for ln in front.stderr_lines if 'model="up"' in ln)
            assert "waited=-" in line
            assert entries(front, FRONT_KEY)["tiny"]["status"]["value"] == "loaded"

            posts = [r for r in upstream.requests if r[0] == "/v1/chat/completions"]
            assert len(posts) == 1
            _, headers, body = posts[0]
            assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
            assert FRONT_KEY not in json.dumps(headers)
            assert json.loads(body)["model"] == "up-model"
            health_checks = [r for r in upstream.requests if r[0] == "/health"]
            assert health_checks and all(
                r[1]["authorization"] == f"Bearer {UPSTREAM_KEY}" for r in health_checks
            )

            upstream.is_healthy = False

            def shows_the_failure() -> bool:
                return entries(front, FRONT_KEY)["up"]["status"]["available"] is False

            wait_until(shows_the_failure, "the failed health check shows", timeout_s=BOUNDED_S)
            status = entries(front, FRONT_KEY)["up"]["status"]
            assert status["health"]["ok"] is False
            assert "HTTP 503" in status["health"]["error"]
            assert "HTTP 503" in status["reason"]

            upstream.is_healthy = True
            wait_until(lambda: not shows_the_failure(), "it is back", timeout_s=BOUNDED_S)

            listing = httpx.get(
                f"{front.base_url}/models",
                headers={"Authorization": f"Bearer {FRONT_KEY}"},
                timeout=BOUNDED_S,
            ).text
            assert UPSTREAM_KEY not in listing
            config = httpx.get(
                f"{front.base_url}/models/up/config",
                headers={"Authorization": f"Bearer {FRONT_KEY}"},
                timeout=BOUNDED_S,
            )
            assert config.status_code == 403
            assert UPSTREAM_KEY not in config.text
        assert UPSTREAM_KEY not in front.stderr_text()


# ---- conf.d, router.toml and --peer -----------------------------------------------------------


def test_a_url_model_file_becomes_a_remote_spec(tmp_path: Path, back_key_env: None) -> None:
    (tmp_path / "ca.pem").write_text("not read here")
    path = tmp_path / "far.toml"
    path.write_text(
        'url = "https://gpu.example:8443/base/"\nremote_model = "big"\n'
        'api_key_env = "TEST_UPSTREAM_KEY"\ntls_verify = "ca.pem"\nconnect_timeout = 3\n'
        'timeout = 90\nhealth = "/v1/models"\naliases = ["f"]\n'
    )
    spec = read_model_file(path)
    assert isinstance(spec, ModelSpec)
    assert spec.path is None and spec.health == "/v1/models" and spec.aliases == ("f",)
    assert spec.upstream == Upstream(
        url="https://gpu.example:8443/base", model="big", api_key_env="TEST_UPSTREAM_KEY",
        tls_verify=tmp_path / "ca.pem", connect_timeout_s=3.0, timeout_s=90.0,
    )  # fmt: skip
    assert UPSTREAM_KEY not in repr(spec)
    assert ModelState(spec).status is Status.REMOTE


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('url = "ftp://host:1"', "http:// or https://"),
        ('url = "http://:8080"', "name a host"),
        ('url = "http://user:pw@host:1"', "api_key_env"),
        ('url = "http://host:99999"', "not a URL"),
        ('url = "http://host:1/?a=b"', "no query"),
        ('url = "http://host:1"\nmodel = "x.gguf"', "does not apply to a 'url' model"),
        ('url = "http://host:1"\nttl = 5', "does not apply to a 'url' model"),
        ('url = "http://host:1"\napi_key_env = "TEST_NOT_SET_ANYWHERE"', "not set"),
        ('url = "http://host:1"\napi_key_env = "A-B"', "environment variable"),
        ('url = "http://host:1"\ntls_verify = "missing.pem"', "no such CA file"),
        ('url = "http://host:1"\ntls_verify = 1', "true, false or a string"),
        ('url = "http://host:1"\nconnect_timeout = 0', "above 0"),
        ('command = ["x", "{port}"]\napi_key_env = "HOME"', "set 'url' too"),
    ],
)
def test_a_bad_url_model_is_listed_invalid_with_a_reason(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "far.toml"
    path.write_text(text + "\n")
    problem = read_model_file(path)
    assert not isinstance(problem, ModelSpec)
    assert says in problem.message


def test_peers_from_router_toml_and_the_command_line(tmp_path: Path, back_key_env: None) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[[peers]]\nname = "gpu-box"\nurl = "http://10.0.0.7:8080"\n'
        'api_key_env = "TEST_BACK_KEY"\n\n[[peers]]\nurl = "http://other.lan:8080"\n'
    )
    peers = read_router_file(config).peers
    assert [peer.name for peer in peers] == ["gpu-box", "other.lan"]
    assert peers[0].upstream.api_key_env == "TEST_BACK_KEY"
    with pytest.raises(ConfigInvalid, match="NAME/model"):
        peer_from({"url": "http://h:1", "name": "a/b"}, tmp_path)
    with pytest.raises(ConfigInvalid, match="unknown key 'api_key'"):
        peer_from({"url": "http://h:1", "api_key": "inline"}, tmp_path)
    config.write_text('[[peers]]\nurl = "http://h:1"\napi_key_env = "TEST_NOT_SET_ANYWHERE"\n')
    with pytest.raises(RouterFileError, match=r"\[\[peers\]\] number 1: .*not set"):
        read_router_file(config)


def test_the_peer_flag_names_a_peer_and_two_of_a_name_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    with pytest.raises(SystemExit) as exited:
        main([
            "plugins", "--peer", "a=http://127.0.0.1:1", "--peer", "a=http://127.0.0.1:2",
            "--models-dir", str(tmp_path),
        ])  # fmt: skip
    assert exited.value.code == 2
    assert "two peers are named 'a'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plugins", "--peer", "http://user:pw@127.0.0.1:1", "--models-dir", str(tmp_path)])
    assert "api_key_env" in capsys.readouterr().err


# ---- the pieces -------------------------------------------------------------------------------


def test_the_body_and_query_name_the_model_by_the_upstreams_id() -> None:
    upstream = Upstream(url="http://h:1", model="tiny", peer="back")
    body, query = upstream_request(
        upstream, bytearray(b'{"model": "back/tiny", "messages": []}'), b"model=back%2Ftiny&x=1"
    )
    assert json.loads(body) == {"model": "tiny", "messages": []}
    assert query == b"model=tiny&x=1"
    assert upstream_request(upstream, b"not json", b"") == (b"not json", b"")
    assert upstream_request(upstream, b"[1]", b"") == (b"[1]", b"")


def remote_pool() -> ModelPool:
    remote = ModelSpec(id="far", path=None, upstream=Upstream(url="http://h:1", model="m"))
    return ModelPool({"far": remote}, models_max=1, plugins=load_plugins([]))


async def test_a_remote_model_is_never_loaded_nor_unloaded_by_the_pool() -> None:
    pool = remote_pool()
    state = pool.models["far"]
    assert state.status is Status.REMOTE
    with pytest.raises(InvalidRequest, match="is remote"):
        pool.request_unload(state)
    async with trio.open_nursery() as nursery:
        with pytest.raises(InvalidRequest, match="is remote"):
            pool.request_load(state, nursery)


async def test_a_failed_check_refuses_requests_at_once_with_the_reason() -> None:
    pool = remote_pool()
    state = pool.models["far"]
    state.health = UpstreamHealth(0.0, False, "cannot connect to http://h:1: refused")
    with pytest.raises(Unavailable, match="cannot connect"):
        async with pool.lease(state, autoload=False):
            pass
    assert state.in_flight == 0
    status = remote_status(state)
    assert status["available"] is False and "cannot connect" in status["reason"]
    state.health = UpstreamHealth(0.0, True)
    async with pool.lease(state, autoload=False) as connections:  # autoload has no say
        assert state.in_flight == 1
        assert connections is state.client
    assert state.in_flight == 0
    assert remote_status(state)["available"] is True


def test_peer_models_are_named_after_the_peer_and_a_local_model_wins() -> None:
    peer = Peer(name="back", upstream=Upstream(url="http://h:1", api_key_env="K"))
    remotes = RemoteUpstreams([peer], interval_s=30)
    remotes._listings["back"].model_ids = ("a", "b")
    specs = remotes.specs(taken={"back/b"})
    assert list(specs) == ["back/a"]
    upstream = specs["back/a"].upstream
    assert upstream is not None
    assert (upstream.model, upstream.peer, upstream.api_key_env) == ("a", "back", "K")


# ---- TLS -------------------------------------------------------------------------------------


def write_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA (ca.pem) and a certificate it signed for 127.0.0.1 (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, is_ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if not is_ca:
            address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = certificate("test CA", ca_key, ca_name, ca_key, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate("127.0.0.1", server_key, ca_name, ca_key, is_ca=False)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_verification_follows_tls_verify(tiny_model: Path, tmp_path: Path) -> None:
    import ssl

    conf = tmp_path / "conf.d"
    conf.mkdir()
    ca, cert, key = write_tls_files(tmp_path)
    with recording_upstream() as upstream:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server = upstream.server
        # The handshake in each connection's own thread (on its first read), not in accept():
        # one slow or silent client must not hold up the others' checks.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        url = upstream.url.replace("http://", "https://")
        for name, verify in (("ca", f'"{ca}"'), ("unverified", "false"), ("system", "true")):
            (conf / f"{name}.toml").write_text(
                f'url = "{url}"\nremote_model = "up-model"\ntls_verify = {verify}\n'
            )
        with running_router(
            tiny_model.parent, "--conf-dir", str(conf), "--remote-interval", "0.3",
            "--spares", "0",
        ) as front:  # fmt: skip

            def checked() -> bool:
                listed = entries(front)  # the folder may hold other tests' models too
                return all(
                    "health" in listed[name]["status"] for name in ("ca", "unverified", "system")
                )

            try:
                wait_until(checked, "every upstream was checked", timeout_s=BOUNDED_S)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {entries(front)}\n{front.stderr_text()}") from None
            listed = entries(front)
            assert listed["ca"]["status"]["available"] is True
            assert listed["unverified"]["status"]["available"] is True
            assert listed["system"]["status"]["available"] is False
            assert "CERTIFICATE_VERIFY_FAILED" in listed["system"]["status"]["reason"]
            for model in ("ca", "unverified"):
                answer = chat(front, model, "no-key-needed")
                assert answer.choices[0].message.content == "upstream says hi"
