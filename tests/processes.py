"""Start real ``llama-router`` processes for end-to-end tests, and always clean them up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from router.processes import lifeline

READY_TIMEOUT_S = 60.0


@dataclass
class ChildProcess:
    """A running ``llama-router child`` started with a lifeline, as the router starts it."""

    process: subprocess.Popen[bytes]
    address: str
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        assert self.address.startswith("http://"), self.address
        return self.address

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def send_stop(self, timeout_s: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(lifeline.stop_command(timeout_s))
        self.process.stdin.flush()

    def close_lifeline(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)


def child_command(model: Path, *args: str) -> list[str]:
    # One thread: the tiny models need microseconds per token, and two threads that wait on
    # each other (OpenMP) while the test process competes for the same 2 cores are 100x slower.
    threads = [] if "--threads" in args else ["--threads", "1"]
    return [sys.executable, "-m", "router", "child", "--model", str(model), *threads, *args]


@contextmanager
def running_child(model: Path, *args: str, port: int = 0) -> Iterator[ChildProcess]:
    """Start a child on ``model`` and wait until it says it is ready; kill it afterwards."""
    secret = lifeline.new_secret()
    command = child_command(model, "--port", str(port), *args)
    with _spawned(command, secret) as (process, stderr_lines):
        address = _wait_ready(process, secret, stderr_lines)
        yield ChildProcess(process=process, address=address, stderr_lines=stderr_lines)


@contextmanager
def _spawned(
    command: Sequence[str], secret: str
) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    env = {**os.environ, lifeline.ENV_VAR: secret, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=_collect, args=(process, stderr_lines), daemon=True)
    reader.start()
    try:
        yield process, stderr_lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reader.join(timeout=5)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def _collect(process: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        lines.append(raw.decode(errors="replace"))


def _wait_ready(process: subprocess.Popen[bytes], secret: str, stderr_lines: list[str]) -> str:
    assert process.stdout is not None
    result: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            address = lifeline.ready_address(raw.decode(errors="replace"), secret)
            if address is not None:
                result.append(address)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT_S)
    if not result:
        raise RuntimeError(
            f"child not ready (exit code {process.poll()}); stderr:\n{''.join(stderr_lines)}"
        )
    return result[0]


def run_child_to_exit(model: Path, *args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run a child that is expected to fail; return its exit code and stderr.

    Its stdin stays open until it exits: end-of-file there would mean "the parent died".
    """
    secret = lifeline.new_secret()
    with _spawned(child_command(model, "--port", "0", *args), secret) as (process, stderr):
        code = process.wait(timeout=timeout_s)
    return code, "".join(stderr)


# ---- the router ------------------------------------------------------------------------------


@dataclass
class RouterProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    stderr_lines: list[str]

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)

    def child_pids(self) -> dict[str, int]:
        """The processes of the loaded models, by model id (as GET /models reports them).

        Not from the command lines: a model handed to a spare child runs in a process whose
        command line says only ``child --spare``.
        """
        import httpx

        data = httpx.get(f"{self.base_url}/models", timeout=10).json()["data"]
        return {
            entry["id"]: entry["status"]["pid"]
            for entry in data
            if entry["status"].get("pid") is not None
        }


def _children_of(parent: int) -> list[tuple[int, str | None]]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != parent or fields[0] == "Z":
            continue
        args = [arg.decode() for arg in cmdline if arg]
        model = _model_in_title(args) if "--alias" not in args else args[args.index("--alias") + 1]
        found.append((int(stat.parent.name), model))
    return found


def _model_in_title(args: list[str]) -> str | None:
    """The model a child names in its process title (None for a spare, or before it has one)."""
    from router.child.main import PROCESS_TITLE, SPARE_MODEL

    prefix = PROCESS_TITLE.format(model="")
    if len(args) != 1 or not args[0].startswith(prefix):
        return None
    model = args[0].removeprefix(prefix)
    return None if model == SPARE_MODEL else model


def pid_is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def running_router(
    models_dir: Path | None,
    *args: str,
    cwd: Path | None = None,
    program: Sequence[str] = (sys.executable, "-m", "router"),
) -> Iterator[RouterProcess]:
    """Start ``llama-router serve`` on a free port; kill it and every child afterwards.

    It runs in ``cwd`` (default: ``models_dir``), so the repository's own conf.d is not used;
    ``program`` is the command that runs ``llama-router`` (another installation's, say).
    ``models_dir`` None: no ``--models-dir`` (the model cache is served); give ``cwd`` then.
    """
    folder = ("--models-dir", str(models_dir)) if models_dir is not None else ()
    command = [*program, "serve", *folder, "--port", "0", "--threads", "1", *args]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        cwd=cwd or models_dir,
    )
    stderr_lines: list[str] = []
    listening: list[str] = []

    def collect() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            stderr_lines.append(line)
            if "listening on " in line and not listening:
                address = line.rsplit("listening on ", 1)[1]
                listening.append(address.split('"', 1)[0].strip())  # --log-format json too

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    children: list[int] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not listening:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start:\n{''.join(stderr_lines)}")
            time.sleep(0.02)
        router = RouterProcess(process=process, base_url=listening[0], stderr_lines=stderr_lines)
        yield router
    finally:
        children = [pid for pid, _ in _children_of(process.pid)]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for pid in children:  # each child has a process group of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        reader.join(timeout=5)
        if process.stderr is not None:
            process.stderr.close()
