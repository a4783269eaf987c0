"""The parent's half of the lifeline: only the child's own secret makes a ready line."""

from __future__ import annotations

from router import lifeline


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
