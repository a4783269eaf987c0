"""External commands as children: any OpenAI-compatible server a conf.d file names.

A command knows no lifeline: it runs under ``router.processes.guard`` (which stops it if the router
dies), in its conf.d file's folder, listening where the router tells it: ``{socket}``, a Unix
socket in the router's private runtime directory, or ``{port}``, a TCP port on 127.0.0.1. A
port was free when the router picked it, but another local user could bind it first and
receive prompts: nothing is sent to the port, not even the health check, until /proc shows
that the listening socket belongs to the command's own process group. It is ready when its
health path answers 200; SIGTERM is its graceful stop.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import trio

from router.errors import WireError
from router.processes import wire
from router.processes.child_process import Child, OnReady
from router.spec import ModelSpec

HEALTH_TIMEOUT_S = 2.0  # for one health check while it starts
PLACEHOLDERS = ("{port}", "{host}", "{socket}", "{model}")


def command_address(spec: ModelSpec, socket_path: Path) -> tuple[str, int | None]:
    """Where ``spec``'s command will listen: ``unix:PATH`` with ``{socket}``, else a free TCP
    port on 127.0.0.1 (with the port)."""
    assert spec.command is not None
    if any("{socket}" in part for part in spec.command):
        return f"unix:{socket_path}", None
    port = _free_port()
    return f"http://127.0.0.1:{port}", port


def command_argv(spec: ModelSpec, socket_path: Path, port: int | None) -> list[str]:
    """The command line: the spec's command with its placeholders filled, under the guard."""
    assert spec.command is not None
    values = dict(
        zip(
            PLACEHOLDERS,
            (str(port), "127.0.0.1", str(socket_path), str(spec.path) if spec.path else ""),
            strict=True,
        )
    )
    return [
        sys.executable, "-m", "router.processes.guard",
        *(_fill(part, values) for part in spec.command),
    ]  # fmt: skip


def working_dir(spec: ModelSpec) -> str | None:
    """A command runs in its conf.d file's folder, so relative paths read as in the file."""
    if spec.command is not None and spec.source_file is not None:
        return str(spec.source_file.parent)
    return None


async def await_healthy(
    child: Child,
    process: trio.Process,
    *,
    load_timeout_s: float,
    poll_s: float,
    on_ready: OnReady,
) -> None:
    """Poll the command's health path until it answers 200; stop it if that takes too long,
    or at once if its port turns out to be held by a stranger.

    Cancellation: returns.
    """
    assert child.command_address is not None
    address, path = child.command_address, child.spec.health
    with trio.move_on_after(load_timeout_s):
        is_port_proven = child.port is None  # a Unix socket in our private folder needs no proof
        while process.returncode is None:
            if not is_port_proven:
                assert child.port is not None
                owners = await trio.to_thread.run_sync(listener_pids, child.port)
                strangers = {pid for pid in owners if process_group(pid) != process.pid}
                if strangers:
                    child.fatal_error = (
                        f"port {child.port} is held by a process that is not its own "
                        f"(pid {', '.join(map(str, sorted(strangers)))}); nothing was "
                        "sent to it. Retry, or pass {socket} instead of {port}"
                    )
                    child.stop_requested.set()
                    return
                if not owners:  # not listening yet
                    await trio.sleep(poll_s)
                    continue
                # Ours, listening: no one else can bind it while it does. Once is enough,
                # not a scan of every process's descriptors per health poll of a long load.
                is_port_proven = True
            try:
                if await wire.probe(address, path, timeout_s=HEALTH_TIMEOUT_S) == 200:
                    on_ready(child, address, process)
                    return
            except WireError:
                pass
            await trio.sleep(poll_s)
    if not child.was_ready and process.returncode is None:
        child.fatal_error = (
            f"GET {path} did not answer 200 within {load_timeout_s:g}s (load timeout); stopped"
        )
        child.stop_requested.set()


def listener_pids(port: int) -> set[int]:
    """The processes holding a socket that listens on ``port`` of 127.0.0.1 or any address.

    Read from /proc: the socket's inode in /proc/net/tcp{,6}, then the processes whose
    /proc/PID/fd has that inode. A listener we cannot attribute (another user's process
    we may not look into) is reported as pid 0, which is in no group of ours.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, _, port_hex = fields[1].rpartition(":")
            if int(port_hex, 16) == port and address.strip("0") in ("", "100007F", "1"):
                inodes.add(fields[9])
    if not inodes:
        return set()
    targets = {f"socket:[{inode}]" for inode in inodes}
    found: set[int] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = {os.readlink(fd) for fd in fd_dir.iterdir()}
        except OSError:
            continue
        if links & targets:
            found.add(int(fd_dir.parent.name))
    return found or {0}


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _fill(part: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        part = part.replace(placeholder, value)
    return part


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
