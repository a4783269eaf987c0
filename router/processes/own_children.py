"""Our own children (``llama-router child``): how they are built, how they say they are ready,
and the spares that wait, already imported, for the next model.

Each speaks the lifeline protocol (``lifeline.py``) over stdin/stdout and serves on a Unix
socket in the router's private runtime directory, named so that no two model ids can share
one. A spare is ``llama-router child --spare``: an interpreter with llama.cpp and the server
already imported, waiting for an ``assign`` line with its model's parsed options (JSON, typed:
the spare never parses a command line); handing a load to a spare saves the half second a new
Python process spends importing. A spare's process that is stopped with ``stop TIMEOUT_S
spare`` frees its model and waits again: the next load reuses it (bounded by the supervisor:
how many models one process serves, how much it may grow).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from router.child_options import child_argv
from router.model_options import options_to_json, parsed_or_none
from router.processes import lifeline, resident
from router.processes.child_process import Child, each_line
from router.spec import ModelSpec

_CHILD_COMMAND = [sys.executable, "-m", "router", "child"]
SPARE_ARGV = [*_CHILD_COMMAND, "--spare"]


def own_child_argv(
    spec: ModelSpec, socket_path: Path, options: Mapping[str, Any], extra_args: Sequence[str]
) -> list[str]:
    """The command line of ``llama-router child`` serving ``spec`` at ``socket_path``."""
    return [
        *_CHILD_COMMAND,
        "--model", str(spec.path),
        "--alias", spec.id,
        "--unix-socket", str(socket_path),
        *(["--mmproj", str(spec.mmproj)] if spec.mmproj is not None else []),
        *child_argv(options),
        *extra_args,
    ]  # fmt: skip


def socket_name(model_id: str) -> str:
    """A socket file name for ``model_id`` that no other id can share.

    ``team:model`` and ``team_model`` read alike once made safe for a file name, so the name
    ends with a hash of the exact id; the readable prefix is cut to keep the socket's path
    well under the 108 bytes a Unix socket address may hold.
    """
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:40]
    digest = hashlib.sha256(model_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}.sock"


class LifelineListener(Protocol):
    """What the supervisor does with each line a child says on its lifeline."""

    def imports_done(self) -> None: ...  # a spare waits for its first model
    def back_to_spare(self) -> None: ...  # its model is freed: it waits for the next one
    def ready(self, address: str) -> None: ...
    def failed(self, failure: lifeline.Failure) -> None: ...


async def read_lifeline(process: trio.Process, secret: str, listener: LifelineListener) -> None:
    """Read a process's lifeline (its stdout) for its whole life; tell ``listener`` each line.

    A spare's first spare line says its imports are done; each later one, that the model it
    served is freed (one per assignment, in order, so the two cannot be confused). Lines
    without this process's secret are ignored.
    Cancellation: returns.
    """
    assert process.stdout is not None
    spare_lines = 0
    async for line in each_line(process.stdout):
        if lifeline.is_spare_line(line, secret):
            spare_lines += 1
            if spare_lines == 1:
                listener.imports_done()
            else:
                listener.back_to_spare()
            continue
        address = lifeline.ready_address(line, secret)
        if address is not None:
            listener.ready(address)
        failed = lifeline.failure(line, secret)
        if failed is not None:
            listener.failed(failed)


async def bound_load(child: Child, *, load_timeout_s: float) -> None:
    """Stop ``child`` if it is not ready within ``load_timeout_s``.

    Cancellation: returns.
    """
    with trio.move_on_after(load_timeout_s):
        await child.became_ready.wait()
        return
    child.fatal_error = f"not ready after {load_timeout_s:g}s (load timeout); stopped"
    child.stop_requested.set()


def can_run_in_a_spare(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is our plain child command, which a spare can take over (a spare gets
    the options of the arguments after ``child``: anything a plugin put before them would be
    lost), and its options parse (else a new child says what is wrong with them)."""
    if list(argv[: len(_CHILD_COMMAND)]) != _CHILD_COMMAND:
        return False
    return parsed_or_none(argv[len(_CHILD_COMMAND) :]) is not None


async def assign_to_spare(process: trio.Process, child: Child) -> bool:
    """Hand ``child``'s model to the spare ``process``; False if the spare died meanwhile.

    Cancellation: the spare may or may not have got the line; it is stopped with the rest.
    """
    assert process.stdin is not None
    options = parsed_or_none(child.argv[len(_CHILD_COMMAND) :])
    if options is None:  # can_run_in_a_spare said they parse
        return False
    try:
        await process.stdin.send_all(b"assign " + options_to_json(*options).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def resident_mib(pid: int) -> int | None:
    """The resident memory of process ``pid`` in MiB (Linux), or None if it cannot be read."""
    rss = resident.resident_bytes(pid)
    return None if rss is None else rss // 2**20
