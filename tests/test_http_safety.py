"""The router's HTTP surface under hostile or careless clients, end to end: real router, real
children (a tiny GGUF, or a stub for a hung backend), raw sockets where the bytes matter.

Answers never cross between clients (``Expect: 100-continue``), a connection that must close
does close (an early 413, ``Connection: close``, ``Content-Length`` with ``Transfer-Encoding``),
no body gets a 500 (deep JSON, huge integers, a path that is not Latin-1), a large body is held
once, a hung child is given up on after ``-to/--timeout``, and connections are capped.
"""

from __future__ import annotations

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

from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama

WAIT_S = 30  # the bound of every wait on the router; nothing here should take near that


@pytest.fixture(scope="module")
def one_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("one")
    write_tiny_llama(folder / "tiny.gguf", context_length=512)
    return folder


@pytest.fixture(scope="module")
def router(one_model: Path) -> Iterator[RouterProcess]:
    with running_router(one_model, "-c", "512") as router:
        yield router


def address(router: RouterProcess) -> tuple[str, int]:
    host, port = router.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(router: RouterProcess) -> socket.socket:
    return socket.create_connection(address(router), timeout=WAIT_S)


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed in the middle of a head: {data!r}"
        data += chunk
    return data


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the router sends until it closes the connection (which it must, in time)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the router kept the connection open; it sent {data[-300:]!r}")
    except ConnectionResetError:
        pass  # closed with our unread bytes in its buffer: closed all the same
    return data


def dechunked(answer: bytes) -> bytes:
    """The body of an answer, chunked or of a stated length (the child's, kept)."""
    head, rest = answer.split(b"\r\n\r\n", 1)
    if b"transfer-encoding: chunked" not in head.lower():
        assert b"content-length: %d\r\n" % len(rest) in head.lower() + b"\r\n", head
        return rest
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2 :]


def tokenize(client: httpx.Client, router: RouterProcess, content: str) -> list[int]:
    response = client.post(
        f"{router.base_url}/tokenize", json={"model": "tiny", "content": content}
    )
    assert response.status_code == 200, response.text
    tokens: list[int] = response.json()["tokens"]
    return tokens


# ---- 1: answers never cross ----------------------------------------------------------------------


def test_expect_100_continue_never_hands_an_answer_to_the_next_client(
    router: RouterProcess,
) -> None:
    with httpx.Client(timeout=WAIT_S) as client:
        one_char = tokenize(client, router, "y")
        long_content = "the quick brown fox jumps over a lazy dog"
        expected = tokenize(client, router, long_content)
        for _ in range(3):
            body = json.dumps({"model": "tiny", "content": long_content}).encode()
            with connect(router) as sock:
                sock.sendall(
                    request_head(
                        "POST", "/tokenize",
                        "Content-Type: application/json", "Expect: 100-continue",
                        f"Content-Length: {len(body)}", "Connection: close",
                    )
                )  # fmt: skip
                assert read_head(sock).startswith(b"HTTP/1.1 100")  # the router's own
                sock.sendall(body)
                answer = read_to_close(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert json.loads(dechunked(answer)) == {"tokens": expected}
            assert answer.count(b"HTTP/1.1 ") == 1  # no interim answer passed on as another
            for _ in range(3):
                assert tokenize(client, router, "y") == one_char


# ---- 12, 13: connections that must close do ------------------------------------------------------


def test_an_early_413_closes_the_connection_instead_of_leaving_it_dead(
    router: RouterProcess,
) -> None:
    with connect(router) as sock:
        sock.sendall(
            request_head("POST", "/tokenize", f"Content-Length: {100 * 1024 * 1024}") + b"x" * 65536
        )
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"connection: close" in head.lower()
        read_to_close(sock)  # and not a connection that never answers again


def test_a_client_connection_close_is_honoured(router: RouterProcess) -> None:
    for path in ("/health", "/v1/models"):
        with connect(router) as sock:
            sock.sendall(request_head("GET", path, "Connection: close"))
            answer = read_to_close(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer


def test_an_unauthorized_request_with_an_unread_body_closes_its_connection(
    one_model: Path,
) -> None:
    with running_router(one_model, "--api-key", "secret") as keyed, connect(keyed) as sock:
        sock.sendall(request_head("POST", "/v1/completions", "Content-Length: 1000000"))
        sock.sendall(b"x" * 1000)
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 401"), head
        assert b"connection: close" in head.lower()
        read_to_close(sock)


def test_content_length_with_transfer_encoding_is_refused_and_closed(
    router: RouterProcess,
) -> None:
    body = b'{"model":"tiny","content":"a"}'
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with connect(router) as sock:
        sock.sendall(
            request_head(
                "POST", "/tokenize", "Content-Length: 5", "Transfer-Encoding: chunked"
            ) + framed
        )  # fmt: skip
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"both Content-Length and Transfer-Encoding" in answer
    # A request smuggled behind it is never answered: the connection closes first (and the
    # race between that close and the answer leaves no traceback in the log).
    for _ in range(5):
        with connect(router) as sock:
            sock.sendall(
                request_head(
                    "POST", "/tokenize", "Content-Length: 5", "Transfer-Encoding: chunked"
                ) + framed + request_head("GET", "/health")
            )  # fmt: skip
            answer = read_to_close(sock)
        assert b'"status": "ok"' not in answer
        assert answer.count(b"HTTP/1.1 ") <= 1
    assert "Traceback" not in router.stderr_text()


# ---- 14: no input makes a 500 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model":"tiny","content":' + b"[" * 1000 + b"]" * 1000 + b"}", "nested too deeply"),
        (b'{"model":"tiny","content":' + b"[" * 100000 + b"}", "nested too deeply"),
        (b'{"model":"tiny","n":' + b"1" * 5000 + b"}", "4300 digits"),
        (b'{"model":' + b"9" * 5000 + b"}", "4300 digits"),
    ],
    ids=["nested-1000", "nested-100000", "int-5000-digits", "model-5000-digits"],
)
def test_hostile_json_is_a_clear_400(router: RouterProcess, body: bytes, message: str) -> None:
    response = httpx.post(f"{router.base_url}/tokenize", content=body, timeout=WAIT_S)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert "Traceback" not in router.stderr_text()


def test_a_path_that_is_not_latin_1_is_a_clear_4xx(router: RouterProcess) -> None:
    for path in ("/v1/%E2%82%AC", "/%F0%9F%A6%99?model=tiny", "/v1/%FF%FE"):
        response = httpx.post(f"{router.base_url}{path}", json={"model": "tiny"}, timeout=WAIT_S)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found_error"
    assert "Traceback" not in router.stderr_text()


# ---- 15: a large body is held once ---------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_60_mb_body_costs_the_router_about_its_size(router: RouterProcess) -> None:
    padding = 60 * 1024 * 1024
    # "model" comes last, as the openai client writes it: the router must find it anyway.
    body = b'{"padding":"' + b"x" * padding + b'","prompt":5,"model":"tiny"}'
    httpx.post(f"{router.base_url}/tokenize", json={"model": "tiny", "content": "warm"})
    pid = router.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from now on
    before_kib = _status_kib(pid, "VmRSS")
    response = httpx.post(f"{router.base_url}/v1/completions", content=body, timeout=120)
    assert response.status_code == 400, response.text  # the child read it all, then refused
    assert "'prompt' must be a string" in response.json()["error"]["message"]
    growth_mib = (_status_kib(pid, "VmHWM") - before_kib) / 1024
    print(f"router peak RSS growth for a {len(body) / 2**20:.1f} MiB body: {growth_mib:.1f} MiB")
    assert growth_mib < len(body) / 2**20 + 12


# ---- -to/--timeout: a hung child -----------------------------------------------------------------


def test_a_stopped_child_fails_its_request_after_the_timeout(one_model: Path) -> None:
    with running_router(one_model, "-c", "512", "--timeout", "2") as router:
        with httpx.Client(timeout=WAIT_S) as client:
            tokenize(client, router, "wake up")
            child = router.child_pids()["tiny"]
            os.kill(child, signal.SIGSTOP)
            try:
                response = client.post(
                    f"{router.base_url}/tokenize", json={"model": "tiny", "content": "x"}
                )
            finally:
                os.kill(child, signal.SIGCONT)
        assert response.status_code == 503, response.text
        assert "-to/--timeout" in response.json()["error"]["message"]


HUNG_BACKEND = textwrap.dedent('''
    """A backend that starts its answers, then hangs: what a stuck server looks like."""
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            if self.path.endswith("stream"):
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b'data: {"choices": [{"text": "a"}]}\\n\\n')
            else:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"choices": [')
            self.wfile.flush()
            time.sleep(3600)

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
''')


@pytest.fixture
def hung_router(tmp_path: Path) -> Iterator[RouterProcess]:
    (tmp_path / "hung.py").write_text(HUNG_BACKEND)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "hung.toml").write_text(
        f'command = [{sys.executable!r}, "../hung.py", "{{port}}"]\nhealth = "/health"\n'
    )
    (tmp_path / "models").mkdir()
    with running_router(tmp_path / "models", "--timeout", "2", cwd=tmp_path) as router:
        yield router


def test_a_child_silent_mid_stream_ends_the_stream_with_an_error_event(
    hung_router: RouterProcess,
) -> None:
    url = f"{hung_router.base_url}/v1/stream"
    with httpx.stream("POST", url, json={"model": "hung"}, timeout=WAIT_S) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[0] == 'data: {"choices": [{"text": "a"}]}'
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert "sent nothing more for too long" in error["message"]


def test_a_child_silent_mid_body_cuts_the_connection(hung_router: RouterProcess) -> None:
    url = f"{hung_router.base_url}/v1/whole"
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
        httpx.post(url, json={"model": "hung"}, timeout=WAIT_S)
    assert "Traceback" not in hung_router.stderr_text()


# ---- a connection limit --------------------------------------------------------------------------


def test_connections_past_the_limit_wait_for_a_free_slot(one_model: Path) -> None:
    with running_router(one_model, "--max-connections", "2") as router:
        held = [connect(router), connect(router)]
        for sock in held:
            sock.sendall(request_head("GET", "/health"))
            assert read_head(sock).startswith(b"HTTP/1.1 200")  # kept alive: a slot each
        with connect(router) as waiting:
            waiting.sendall(request_head("GET", "/health", "Connection: close"))
            waiting.settimeout(1)
            with pytest.raises(TimeoutError):
                waiting.recv(65536)  # not accepted: no answer while both slots are taken
            held.pop().close()
            waiting.settimeout(WAIT_S)
            assert read_to_close(waiting).startswith(b"HTTP/1.1 200")
        held[0].close()
        wait_until(
            lambda: httpx.get(f"{router.base_url}/health").status_code == 200,
            "the router serves new connections once the old ones are gone",
        )


def _close_wait_connections(port: int) -> int:
    """Connections to ``port`` that their client closed and the server has not (CLOSE-WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "08" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_connections_their_clients_closed_are_closed_at_once(router: RouterProcess) -> None:
    """An answer finished just as its client closed restarted the keep-alive timer: the
    connection then sat in CLOSE-WAIT for 75 s, holding a connection slot."""
    _, port = address(router)
    for _ in range(12):
        response = httpx.post(
            f"{router.base_url}/v1/completions",
            json={"model": "tiny", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
        assert response.status_code == 200
    wait_until(lambda: _close_wait_connections(port) == 0, "the server closes them", 10)
