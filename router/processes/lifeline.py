"""The parent/child protocol: how a child says it is ready, and how it learns to stop.

Both halves live here so that they cannot drift apart.

* Spawn: the parent passes a fresh random secret in the environment variable
  ``LLAMA_ROUTER_LIFELINE`` (readable only by the same user, through ``/proc/PID/environ``).
* Ready: once the model is loaded and the server listens, the child writes one line,
  ``llama-router-ready SECRET ADDRESS``, to its original stdout, which is a pipe only the
  parent reads. The child first moves its own fd 1 onto stderr, so stray prints (Python or C)
  can never interleave with the protocol. A line only counts when the secret matches, compared
  in constant time: no other local process can forge readiness, and no log line can fake it.
* Failed: a child that cannot start serving (the model does not load, the address is taken)
  writes ``llama-router-failed SECRET JSON`` on the same pipe instead, then exits 1. The JSON
  is one object with ``message`` (one line that says why, as on its stderr) and ``kind``, one
  of :data:`FAILURE_KINDS`, so the parent never has to guess from the child's log.
* Stop: the parent writes ``stop TIMEOUT_S`` on the child's stdin. The child stops accepting
  requests, lets running ones finish for up to TIMEOUT_S seconds, cancels the rest and exits 0.
* Spare: a spare (``child --spare``) writes ``llama-router-spare SECRET`` once its imports are
  done and it waits for ``assign JSON_ARGV`` on stdin. ``stop TIMEOUT_S spare`` stops the same
  way, but then the child frees its model, closes its server and writes the spare line again
  instead of exiting: the process serves the next model without a new interpreter or imports.
* Parent death: end-of-file on stdin means the parent is gone (even after SIGKILL, since the
  kernel closes its end of the pipe). The child exits at once: no one is left to serve.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass

import trio

ENV_VAR = "LLAMA_ROUTER_LIFELINE"
READY_WORD = "llama-router-ready"
FAILED_WORD = "llama-router-failed"
SPARE_WORD = "llama-router-spare"
STOP_WORD = "stop"
BACK_TO_SPARE_WORD = "spare"  # after ``stop TIMEOUT_S``: wait for the next model, do not exit

# Why a child failed, as the ``kind`` of its failed line.
FAILURE_KINDS = frozenset(
    {
        "not_found",  # no file at the model path, or not a regular file
        "unreadable",  # the file exists but cannot be read (permissions, I/O error)
        "not_gguf",  # the file does not start with the GGUF magic
        "llama_error",  # llama.cpp refused the file: truncated, corrupt, unknown architecture
        "out_of_memory",  # the weights loaded, but a context of the asked size did not fit
        "bad_template",  # --chat-template names no built-in, or a template is not valid Jinja
        "listen_error",  # the server's address or socket path could not be bound
        "internal",  # anything else: a bug, whose traceback is on the child's stderr
    }
)


# ---- parent half -----------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh secret for one child."""
    return secrets.token_hex(16)


def ready_address(line: str, secret: str) -> str | None:
    """The address in ``line`` if it is this child's ready line, else None."""
    parts = line.strip().split(" ")
    if len(parts) != 3 or parts[0] != READY_WORD:
        return None
    if not hmac.compare_digest(parts[1].encode(), secret.encode()):
        return None
    return parts[2]


def is_spare_line(line: str, secret: str) -> bool:
    """Whether ``line`` is this child's spare line: it waits, imports done, for a model."""
    parts = line.strip().split(" ")
    return (
        len(parts) == 2
        and parts[0] == SPARE_WORD
        and hmac.compare_digest(parts[1].encode(), secret.encode())
    )


@dataclass(frozen=True)
class Failure:
    """Why a child could not start serving, as its failed line says."""

    kind: str  # one of FAILURE_KINDS, or a newer one this router does not know yet
    message: str


def failure(line: str, secret: str) -> Failure | None:
    """The failure in ``line`` if it is this child's failed line, else None."""
    parts = line.strip().split(" ", 2)
    if len(parts) != 3 or parts[0] != FAILED_WORD:
        return None
    if not hmac.compare_digest(parts[1].encode(), secret.encode()):
        return None
    try:
        fields = json.loads(parts[2])
    except ValueError:
        return None
    if not isinstance(fields, dict) or not isinstance(fields.get("message"), str):
        return None
    kind = fields.get("kind")
    return Failure(kind=kind if isinstance(kind, str) else "internal", message=fields["message"])


def failed_reason(line: str, secret: str) -> str | None:
    """The message in ``line`` if it is this child's failed line, else None."""
    found = failure(line, secret)
    return None if found is None else found.message


def stop_command(timeout_s: float, *, back_to_spare: bool = False) -> bytes:
    """What the parent writes on the child's stdin to ask for a graceful exit (or, with
    ``back_to_spare``, a graceful stop after which the process waits as a spare)."""
    tail = f" {BACK_TO_SPARE_WORD}" if back_to_spare else ""
    return f"{STOP_WORD} {timeout_s:g}{tail}\n".encode()


# ---- child half ------------------------------------------------------------------------------


@dataclass
class ChildLifeline:
    """The child's end: announce readiness once, then obey stdin."""

    secret: str
    ready_fd: int
    has_reported: bool = False  # the ready or failed line is written: the parent knows
    is_back_to_spare_asked: bool = False  # the stop said: wait for the next model after it

    @classmethod
    def from_environment(cls) -> ChildLifeline | None:
        """The lifeline if a parent started us with one, else None (run by hand).

        Takes over fd 1: the protocol keeps a private copy, and fd 1 itself now points at
        stderr, so that nothing else can write to the parent's pipe.
        """
        secret = os.environ.pop(ENV_VAR, None)
        if not secret:
            return None
        sys.stdout.flush()
        ready_fd = os.dup(1)
        os.dup2(2, 1)
        return cls(secret=secret, ready_fd=ready_fd)

    def announce_ready(self, address: str) -> None:
        """Tell the parent we serve at ``address`` (``unix:/path`` or ``http://host:port``)."""
        os.write(self.ready_fd, f"{READY_WORD} {self.secret} {address}\n".encode())
        self.has_reported = True

    def announce_spare(self) -> None:
        """Tell the parent we wait, imports done and no model held, for an ``assign`` line."""
        os.write(self.ready_fd, f"{SPARE_WORD} {self.secret}\n".encode())
        self.has_reported = False
        self.is_back_to_spare_asked = False

    def announce_failure(self, kind: str, message: str) -> None:
        """Tell the parent why we cannot serve (``kind`` from :data:`FAILURE_KINDS`)."""
        fields = json.dumps({"kind": kind, "message": message}, ensure_ascii=True)
        os.write(self.ready_fd, f"{FAILED_WORD} {self.secret} {fields}\n".encode())
        self.has_reported = True

    async def obey_parent(self, request_stop: Callable[[float], None]) -> None:
        """Read commands from stdin until EOF; call ``request_stop(timeout_s)`` on ``stop``
        (``stop TIMEOUT_S spare`` sets ``is_back_to_spare_asked`` first).

        The parent writes nothing after a stop until the child's spare line, so nothing this
        reader buffers can belong to the next ``assign``.

        On EOF the parent is gone: the process exits immediately with status 0, without
        waiting for inference threads, because nobody can receive their output any more.

        Cancellation: returns, leaving stdin unread.
        """
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        async with stdin:
            while True:
                data = await stdin.receive_some(4096)
                if not data:
                    print("parent closed the lifeline (stdin EOF): exiting", file=sys.stderr)
                    sys.stderr.flush()
                    os._exit(0)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    words = line.decode(errors="replace").split()
                    if words and words[0] == STOP_WORD:
                        timeout_s = float(words[1]) if len(words) > 1 else 10.0
                        if words[2:3] == [BACK_TO_SPARE_WORD]:
                            self.is_back_to_spare_asked = True
                        request_stop(timeout_s)
