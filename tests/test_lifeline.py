"""Both halves of the lifeline: only the child's own secret makes a ready or failed line."""

from __future__ import annotations

import json
import os

from router.processes import lifeline


def test_ready_line_with_the_secret_gives_the_address() -> None:
    secret = lifeline.new_secret()
    line = f"{lifeline.READY_WORD} {secret} unix:/run/x.sock\n"
    assert lifeline.ready_address(line, secret) == "unix:/run/x.sock"


def test_forged_or_garbled_ready_lines_are_ignored() -> None:
    secret = lifeline.new_secret()
    assert lifeline.ready_address(f"{lifeline.READY_WORD} {'0' * 32} http://x", secret) is None
    assert lifeline.ready_address(f"{lifeline.READY_WORD} {secret}", secret) is None
    assert lifeline.ready_address(f"ready {secret} http://x", secret) is None
    assert lifeline.ready_address("", secret) is None


def test_secrets_differ_per_child() -> None:
    assert lifeline.new_secret() != lifeline.new_secret()


def test_stop_command_carries_the_timeout() -> None:
    assert lifeline.stop_command(2.5) == b"stop 2.5\n"


def _failed_line(secret: str, fields: object) -> str:
    return f"{lifeline.FAILED_WORD} {secret} {json.dumps(fields)}\n"


def test_failed_line_with_the_secret_gives_kind_and_message() -> None:
    secret = lifeline.new_secret()
    line = _failed_line(secret, {"kind": "not_gguf", "message": "x.gguf is not a GGUF file"})
    assert lifeline.failed_reason(line, secret) == "x.gguf is not a GGUF file"
    assert lifeline.failure(line, secret) == lifeline.Failure(
        kind="not_gguf", message="x.gguf is not a GGUF file"
    )
    assert lifeline.ready_address(line, secret) is None


def test_forged_or_garbled_failed_lines_are_ignored() -> None:
    secret = lifeline.new_secret()
    fields = {"kind": "not_found", "message": "gone"}
    assert lifeline.failed_reason(_failed_line("0" * 32, fields), secret) is None
    assert lifeline.failed_reason(f"{lifeline.FAILED_WORD} {secret}", secret) is None
    assert lifeline.failed_reason(f"{lifeline.FAILED_WORD} {secret} {{not json", secret) is None
    assert lifeline.failed_reason(_failed_line(secret, ["gone"]), secret) is None
    assert lifeline.failed_reason(_failed_line(secret, {"kind": "not_found"}), secret) is None
    assert lifeline.failed_reason(f"error: {secret} {json.dumps(fields)}", secret) is None
    ready = f"{lifeline.READY_WORD} {secret} http://x"
    assert lifeline.failed_reason(ready, secret) is None


def test_a_failure_without_a_known_kind_still_gives_its_message() -> None:
    secret = lifeline.new_secret()
    line = _failed_line(secret, {"message": "something new"})
    assert lifeline.failure(line, secret) == lifeline.Failure(
        kind="internal", message="something new"
    )


def test_the_child_writes_one_failed_line_the_parent_reads() -> None:
    secret = lifeline.new_secret()
    read_fd, write_fd = os.pipe()
    try:
        child = lifeline.ChildLifeline(secret=secret, ready_fd=write_fd)
        message = 'cannot load "a b.gguf":\nllama.cpp said ünïcode things'
        child.announce_failure("llama_error", message)
        assert child.has_reported
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as pipe:
            read_fd = -1
            lines = pipe.read().decode().splitlines()
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    assert len(lines) == 1
    assert lifeline.failure(lines[0], secret) == lifeline.Failure(
        kind="llama_error", message=message
    )
