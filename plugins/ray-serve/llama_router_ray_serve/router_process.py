"""One replica's llama-router: started as a child process (no shell) on a loopback port,
under ``router.processes.guard`` so that it dies with the replica, and stopped.

Why the guard: Ray may end a replica's worker process outright (``ray.kill``, a failed health
check, a node going away) without running any of its code. The guard holds the read end of a
pipe whose write end only this process holds; when this process dies, for whatever reason, the
guard reads end-of-file and ends the router's whole process group (the router's own children
then see their lifelines close and exit). Ray may SIGKILL the guard itself at that moment (it
kills a dead worker's direct children), so the router also runs under ``parent_death``: the
kernel sends it SIGTERM when the guard dies.

Blocking code, with threads: it runs in a Ray actor's constructor and destructor, never on
the router's Trio loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from router.errors import StartupError

log = logging.getLogger("ray.serve")

# What `llama-router serve` logs once it accepts connections (router/server.py), then its URL.
LISTENING = "listening on "


class RouterDidNotStart(StartupError):
    """The replica's router exited, or said nothing, before listening; carries its last lines."""


@dataclass
class RouterProcess:
    """A running router and what its stderr said; ``base_url`` is loopback only."""

    process: subprocess.Popen[bytes]
    base_url: str
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The guard's pid, which is also the router's process group."""
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM to the router (it lets running requests finish within its --stop-timeout),
        then SIGKILL to the whole group if it is not gone within ``timeout_s``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        if self.process.stdin is not None:
            self.process.stdin.close()


def start_router(args: list[str], *, timeout_s: float) -> RouterProcess:
    """Start ``llama-router serve --host 127.0.0.1 --port 0 ARGS`` and return once it listens.

    Its stderr keeps being read by a daemon thread (a full pipe would stall the router) and
    goes to this replica's log, which Ray collects. Raises RouterDidNotStart, with the
    router's last lines, when it exits or does not listen within ``timeout_s``.
    """
    command = [
        sys.executable, "-m", "router.processes.guard",
        sys.executable, "-m", "llama_router_ray_serve.parent_death",
        sys.executable, "-m", "router", "serve", "--host", "127.0.0.1", "--port", "0", *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,  # the guard's lifeline: end-of-file when this process dies
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # the guard ends its own group, never the Ray worker's
    )
    stderr_tail: list[str] = []
    listening = threading.Event()
    addresses: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            stderr_tail.append(line)
            del stderr_tail[:-50]
            log.info("router: %s", line)
            if LISTENING in line and not listening.is_set():
                addresses.append(line.rsplit(LISTENING, 1)[1].split('"', 1)[0].strip())
                listening.set()
        listening.set()  # the router exited: stop waiting

    threading.Thread(target=read_stderr, name="router-stderr", daemon=True).start()
    if not listening.wait(timeout_s) or not addresses:
        router = RouterProcess(process, "", stderr_tail)
        router.stop(timeout_s=5)
        raise RouterDidNotStart(
            f"llama-router did not listen within {timeout_s:.0f} s (exit code "
            f"{process.poll()}); its last lines:\n" + "\n".join(stderr_tail[-20:])
        )
    return RouterProcess(process, addresses[0], stderr_tail)
