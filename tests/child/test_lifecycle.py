"""The child as the router sees it: lifeline, stop, parent death, load failures, queueing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from router.processes import lifeline
from tests.processes import ChildProcess, child_command, run_child_to_exit, running_child

# Long enough (tens of seconds) that it only ends early when the test ends it.
LONG_GENERATION = {"prompt": "go", "max_tokens": 60000, "ignore_eos": True, "stream": True}
LONG_CONTEXT = ("--ctx-size", "65536")


def _wait_until(condition: object, what: str, timeout_s: float = 30) -> None:
    """Poll ``condition`` until true; a generous deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def _slots(child: ChildProcess) -> list[dict[str, object]]:
    slots: list[dict[str, object]] = httpx.get(f"{child.base_url}/slots").json()
    return slots


def _decoded(child: ChildProcess, slot: int = 0) -> int:
    next_token = _slots(child)[slot]["next_token"]
    assert isinstance(next_token, dict)
    return int(next_token["n_decoded"])


def test_ready_line_needs_the_secret(tiny_model: Path) -> None:
    with running_child(tiny_model) as child:
        assert child.address.startswith("http://127.0.0.1:")
        assert httpx.get(f"{child.base_url}/health").status_code == 200


def test_child_refuses_without_the_api_key(tiny_model: Path) -> None:
    with running_child(tiny_model, "--api-key", "sesame") as child:
        assert httpx.get(f"{child.base_url}/health").status_code == 200
        refused = httpx.get(f"{child.base_url}/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        wrong = httpx.get(f"{child.base_url}/v1/models", headers={"x-api-key": "sesam"})
        assert wrong.status_code == 401
        client = openai.OpenAI(base_url=child.openai_base_url, api_key="sesame", max_retries=0)
        assert client.models.list().data[0].id == "tiny"


def test_disconnect_stops_generation(tiny_model: Path) -> None:
    with running_child(tiny_model, *LONG_CONTEXT) as child:
        with httpx.stream(
            "POST", f"{child.base_url}/v1/completions", json=LONG_GENERATION, timeout=30
        ) as response:
            lines = response.iter_lines()
            for _ in range(5):
                next(lines)
        _wait_until(lambda: not _slots(child)[0]["is_processing"], "the slot is idle")
        # Without cancellation the slot would decode all 60000 tokens.
        assert _decoded(child) < 2000


def test_stop_command_finishes_running_requests_then_exits_zero(tiny_model: Path) -> None:
    with running_child(tiny_model, "--ctx-size", "4096") as child:
        results: list[httpx.Response] = []

        def request() -> None:
            results.append(
                httpx.post(
                    f"{child.base_url}/v1/completions",
                    json={"prompt": "go", "max_tokens": 3000, "ignore_eos": True},
                    timeout=60,
                )
            )

        worker = threading.Thread(target=request)
        worker.start()
        _wait_until(lambda: _slots(child)[0]["is_processing"], "generation started")
        child.send_stop(30)
        worker.join(60)
        assert child.process.wait(timeout=30) == 0
        assert results[0].status_code == 200
        assert results[0].json()["usage"]["completion_tokens"] == 3000
        assert "stopping" in child.stderr_text()


def test_stop_timeout_cancels_what_is_still_running(tiny_model: Path) -> None:
    with running_child(tiny_model, *LONG_CONTEXT) as child:
        with httpx.stream(
            "POST", f"{child.base_url}/v1/completions", json=LONG_GENERATION, timeout=30
        ) as response:
            lines = response.iter_lines()
            next(lines)
            child.send_stop(0.2)
            remaining = list(lines)
            assert child.process.wait(timeout=20) == 0
        events = [line for line in remaining if line.startswith("data: ")]
        assert "data: [DONE]" not in events  # cut short, not finished...
        assert '"unavailable_error"' in events[-1]  # ...and it says so in an error event


def test_stdin_eof_means_the_parent_died_and_the_child_exits(tiny_model: Path) -> None:
    with running_child(tiny_model, *LONG_CONTEXT) as child:
        with httpx.stream(
            "POST", f"{child.base_url}/v1/completions", json=LONG_GENERATION, timeout=30
        ) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            child.close_lifeline()
            assert child.process.wait(timeout=5) == 0
        assert "parent closed the lifeline" in child.stderr_text()


def test_sigterm_is_a_graceful_stop(tiny_model: Path) -> None:
    with running_child(tiny_model) as child:
        child.process.terminate()
        assert child.process.wait(timeout=20) == 0


def _run_to_exit(
    tmp_path: Path, model: Path, *args: str, timeout_s: float = 60
) -> tuple[int, lifeline.Failure | None, str]:
    """Run a child that should fail, as the router runs it; its exit code, what its lifeline
    said, and its stderr. Its stdin stays open: end-of-file there would mean "parent died"."""
    secret = lifeline.new_secret()
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            child_command(model, "--port", "0", *args),
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, lifeline.ENV_VAR: secret},
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout_s)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            assert process.stdin is not None
            process.stdin.close()
    lines = stdout_path.read_text().splitlines()
    failures = [lifeline.failure(line, secret) for line in lines]
    assert len(lines) <= 1, lines  # one failed line, nothing else
    return code, failures[0] if failures else None, stderr_path.read_text()


@pytest.mark.parametrize(
    ("model_fixture", "kind", "reason"),
    [
        ("missing", "not_found", "model file not found"),
        ("directory", "not_found", "model path is not a file"),
        ("not_a_gguf", "not_gguf", "is not a GGUF file"),
        ("truncated_model", "llama_error", "not within the file bounds"),
    ],
)
def test_load_failure_exits_nonzero_with_one_clear_line_and_says_why_on_the_lifeline(
    request: pytest.FixtureRequest, tmp_path: Path, model_fixture: str, kind: str, reason: str
) -> None:
    if model_fixture == "missing":
        model = tmp_path / "absent.gguf"
    elif model_fixture == "directory":
        model = tmp_path / "folder.gguf"
        model.mkdir()
    else:
        model = request.getfixturevalue(model_fixture)
    code, failure, stderr = _run_to_exit(tmp_path, model)
    assert code == 1
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    assert reason in error_lines[0]
    assert str(model) in error_lines[0]
    assert failure == lifeline.Failure(kind=kind, message=error_lines[0].removeprefix("error: "))


@pytest.mark.parametrize(
    ("template", "reason"),
    [("vicuna-of-my-dreams", "unknown --chat-template"), ("{% if %}", "not a valid Jinja")],
)
def test_a_bad_chat_template_is_a_load_failure_not_a_traceback(
    tmp_path: Path, tiny_model: Path, template: str, reason: str
) -> None:
    code, failure, stderr = _run_to_exit(tmp_path, tiny_model, "--chat-template", template)
    assert code == 1
    assert "Traceback" not in stderr
    assert failure is not None
    assert failure.kind == "bad_template"
    assert reason in failure.message
    assert f"error: {failure.message}" in stderr.splitlines()


def test_more_slots_than_llama_cpp_allows_is_a_load_failure(
    tmp_path: Path, tiny_model: Path
) -> None:
    code, failure, stderr = _run_to_exit(tmp_path, tiny_model, "--parallel", "100000")
    assert code == 1
    assert "Traceback" not in stderr
    assert failure is not None
    assert failure.kind == "bad_option"
    assert "--parallel 100000 is more than llama.cpp's" in failure.message


def test_an_address_in_use_is_a_failure_on_the_lifeline(tmp_path: Path, tiny_model: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, failure, stderr = _run_to_exit(tmp_path, tiny_model, "--port", str(port))
    assert code == 1
    assert "Traceback" not in stderr
    assert failure is not None
    assert failure.kind == "listen_error"
    assert f"127.0.0.1:{port}" in failure.message


def test_bad_flag_exits_with_usage_error(tiny_model: Path) -> None:
    code, stderr = run_child_to_exit(tiny_model, "--parallel", "0")
    assert code == 2
    assert "--parallel" in stderr


def test_full_queue_answers_429_with_retry_after(tiny_model: Path) -> None:
    with running_child(tiny_model, *LONG_CONTEXT, "--max-queue", "1") as child:
        queued: list[httpx.Response] = []
        with httpx.stream(
            "POST", f"{child.base_url}/v1/completions", json=LONG_GENERATION, timeout=60
        ) as running:
            running_lines = running.iter_lines()  # kept: a dropped iterator closes the response
            next(running_lines)
            waiter = threading.Thread(
                target=lambda: queued.append(
                    httpx.post(
                        f"{child.base_url}/v1/completions",
                        json={"prompt": "q", "max_tokens": 1},
                        timeout=60,
                    )
                )
            )
            waiter.start()
            _wait_until(
                lambda: httpx.get(f"{child.base_url}/props").json()["queue"]["waiting"] == 1,
                "one request waits",
            )
            client = openai.OpenAI(base_url=child.openai_base_url, api_key="x", max_retries=0)
            with pytest.raises(openai.RateLimitError) as caught:
                client.completions.create(model="tiny", prompt="q", max_tokens=1)
            assert caught.value.response.headers["retry-after"] == "1"
            assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]
        # Closing the running stream frees the slot; the queued request then completes.
        waiter.join(60)
        assert queued[0].status_code == 200


def test_parallel_slots_generate_at_the_same_time(tiny_model: Path) -> None:
    with running_child(tiny_model, *LONG_CONTEXT, "--parallel", "2") as child:
        with (
            httpx.stream(
                "POST", f"{child.base_url}/v1/completions", json=LONG_GENERATION, timeout=60
            ) as first,
            httpx.stream(
                "POST", f"{child.base_url}/v1/completions", json=LONG_GENERATION, timeout=60
            ) as second,
        ):
            first_lines, second_lines = first.iter_lines(), second.iter_lines()
            next(first_lines)
            next(second_lines)
            assert [slot["is_processing"] for slot in _slots(child)] == [True, True]
        props = httpx.get(f"{child.base_url}/props").json()
        assert props["total_slots"] == 2


def test_parallel_slots_share_one_copy_of_the_weights(wide_model: Path) -> None:
    """Extra slots cost a context each, not a model each: compare the RSS of -np 1 and 4."""

    def rss_kib(*args: str) -> int:
        with running_child(wide_model, "--no-mmap", "--ctx-size", "64", *args) as child:
            status = Path(f"/proc/{child.process.pid}/status").read_text()
            return int(
                next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            )

    model_kib = wide_model.stat().st_size // 1024
    assert rss_kib("--parallel", "4") - rss_kib("--parallel", "1") < model_kib


def test_untemplated_model_falls_back_to_chatml(tiny_model_without_template: Path) -> None:
    with running_child(tiny_model_without_template) as child:
        props = httpx.get(f"{child.base_url}/props").json()
        assert props["chat_template_source"] == "chatml"
        response = httpx.post(
            f"{child.base_url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert response.status_code == 200


def test_child_command_line_help_lists_llama_server_flags() -> None:
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "router", "child", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in (
        "--ctx-size",
        "-ngl",
        "--threads",
        "--batch-size",
        "--parallel",
        "--chat-template",
        "--embeddings",
        "--alias",
        "--unix-socket",
    ):
        assert flag in completed.stdout
