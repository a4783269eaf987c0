"""The access log: one line per request (text or JSON), on both paths, refusals included, that
no client's text can break or forge; ``--log-file`` and its mode."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from router.logs import printable
from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOSTILE_MODEL = 'ghost\n2026-01-01 00:00:00.000 127.0.0.1 "GET /forged" 200'


@pytest.fixture(scope="module")
def one_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("logged")
    write_tiny_llama(folder / "tiny.gguf")
    return folder


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def access_lines(text: str) -> list[str]:
    """The text access lines: those with a quoted request after the time and the client."""
    return [line for line in text.splitlines() if ' "GET /' in line or ' "POST /' in line]


def raw_request(router: RouterProcess, head: bytes) -> bytes:
    host, port = router.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        return sock.recv(65536)


def send_the_four(router: RouterProcess) -> None:
    """A success, a 401, a 404 for a hostile model name, a 413: four requests."""
    client = openai.OpenAI(base_url=router.openai_base_url, api_key=KEY, max_retries=0)
    client.completions.create(
        model="tiny", prompt="hi", max_tokens=3, extra_body={"ignore_eos": True}
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=router.openai_base_url, api_key="wrong", max_retries=0
        ).completions.create(model="tiny", prompt="hi", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=HOSTILE_MODEL, prompt="hi", max_tokens=3)
    answer = raw_request(
        router,
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sesame\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest.fixture(scope="module")
def text_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text-log") / "router.log"


@pytest.fixture(scope="module")
def text_router(one_model: Path, text_log: Path) -> Iterator[RouterProcess]:
    with running_router(
        one_model, "--api-key", KEY, "--spares", "0", "-c", "256", "--log-file", str(text_log)
    ) as router:
        yield router


def test_four_requests_print_four_lines(text_router: RouterProcess) -> None:
    before = len(access_lines(text_router.stderr_text()))
    send_the_four(text_router)
    wait_for(lambda: len(access_lines(text_router.stderr_text())) >= before + 4, "four lines")
    lines = access_lines(text_router.stderr_text())[before:]
    assert len(lines) == 4, lines
    success, refused, not_found, too_large = lines
    assert '"POST /v1/completions" 200 ' in success
    assert 'model="tiny"' in success
    assert "/3 " in success.split("tokens=")[1]  # ignore_eos: exactly max_tokens
    assert "waited=load" in success  # the first request loaded the model
    assert '"POST /v1/completions" 401 ' in refused
    assert '"POST /v1/completions" 404 ' in not_found
    assert f'model="{printable(HOSTILE_MODEL, quoted=True)}"' in not_found
    assert '"POST /v1/completions" 413 ' in too_large


def test_a_hostile_model_name_stays_on_its_line(text_router: RouterProcess) -> None:
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            base_url=text_router.openai_base_url, api_key=KEY, max_retries=0
        ).completions.create(model=HOSTILE_MODEL, prompt="hi", max_tokens=3)
    escaped = printable(HOSTILE_MODEL, quoted=True)
    assert "\n" not in escaped
    wait_for(lambda: escaped in text_router.stderr_text(), "the 404 line")
    line = next(line for line in text_router.stderr_text().splitlines() if escaped in line)
    assert " 404 " in line and line.endswith('"')
    assert not any(line.startswith("2026-01-01") for line in text_router.stderr_text().splitlines())


def test_a_hostile_user_agent_stays_on_its_line(text_router: RouterProcess) -> None:
    # \x85 (NEL) and U+2028 end a line for some readers (Python's splitlines among them).
    agent = 'probe\x85forged\u2028also "quoted" \\'
    answer = raw_request(
        text_router,
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sesame\r\n"
        b"User-Agent: " + agent.encode("utf-8") + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    wait_for(lambda: "probe" in text_router.stderr_text(), "the line")
    [line] = [line for line in text_router.stderr_text().splitlines() if "probe" in line]
    assert "forged" in line
    assert 'agent="probe' in line and r"\"quoted\" \\" in line


def test_the_log_file_is_private_and_gets_the_lines(
    text_router: RouterProcess, text_log: Path
) -> None:
    log_file = text_log
    httpx.get(f"{text_router.base_url}/v1/models", headers={**AUTH, "User-Agent": "to-the-file"})
    wait_for(lambda: "to-the-file" in log_file.read_text(), "the line in the file")
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600
    assert "llama-router listening on" in log_file.read_text()


def test_metrics_refuse_without_the_key_and_are_logged(text_router: RouterProcess) -> None:
    assert httpx.get(f"{text_router.base_url}/metrics").status_code == 401
    wait_for(lambda: '"GET /metrics" 401 ' in text_router.stderr_text(), "the 401 line")


def test_json_lines_are_one_object_each(
    one_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log_file = tmp_path_factory.mktemp("json-log") / "router.log"
    with running_router(
        one_model, "--api-key", KEY, "--spares", "0", "-c", "256",
        "--log-format", "json", "--log-file", str(log_file),
    ) as router:  # fmt: skip
        send_the_four(router)

        def accesses() -> list[dict[str, object]]:
            entries = [json.loads(line) for line in log_file.read_text().splitlines()]
            return [entry["access"] for entry in entries if "access" in entry]

        wait_for(lambda: len(accesses()) >= 4, "four access lines")
        for line in router.stderr_text().splitlines():
            assert isinstance(json.loads(line), dict), line  # every line, not only access ones
    success, refused, not_found, too_large = accesses()
    assert success["status"] == 200 and success["model"] == "tiny"
    assert success["path"] == "/v1/completions" and success["method"] == "POST"
    assert success["tokens_in"] and success["tokens_out"] == 3
    assert success["waited_for_load"] is True and success["client"] == "127.0.0.1"
    assert refused["status"] == 401
    assert not_found["status"] == 404 and not_found["model"] == HOSTILE_MODEL
    assert too_large["status"] == 413
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600


@pytest.mark.parametrize(
    ("text", "quoted", "shown"),
    [
        ("plain text", True, "plain text"),
        ("a\nb\rc", False, r"a\nb\rc"),
        ('say "hi" \\', True, r"say \"hi\" \\"),
        ('say "hi" \\', False, 'say "hi" \\'),
        ("bell\x07 esc\x1b nel\x85 ls\u2028", True, r"bell\x07 esc\x1b nel\x85 ls\u2028"),
        ("café ✓", True, "café ✓"),
    ],
)
def test_printable_escapes_what_could_break_a_line(text: str, quoted: bool, shown: str) -> None:
    assert printable(text, quoted=quoted) == shown
    assert len(printable(text, quoted=quoted).splitlines()) <= 1
