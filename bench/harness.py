"""Processes under test, and the results they produce.

Every system runs as a real process on this machine, started and stopped here:

* ``direct``: our child (``llama-router child``) on a TCP port, the baseline for the router;
* ``llama-router``: our router over a models folder;
* ``llama-server``: llama.cpp's server on one model (the baseline for its router);
* ``llama.cpp-router``: llama.cpp's router mode over the same folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from router.cpu import physical_core_count


@dataclass(frozen=True)
class Result:
    name: str  # what was measured: "added_latency", "stream_gemma", ...
    system: str  # direct, llama-router, llama.cpp-router, llama-server
    metric: str  # p50_ms, tokens_per_s, ...
    value: float
    unit: str


@dataclass
class Results:
    items: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how a figure was taken, for the report

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add(self, name: str, system: str, metric: str, value: float, unit: str) -> None:
        self.items.append(Result(name, system, metric, round(value, 4), unit))
        print(f"  {name:18s} {system:17s} {metric:16s} {value:10.3f} {unit}", file=sys.stderr)

    def get(self, name: str, system: str, metric: str) -> float | None:
        for item in self.items:
            if (item.name, item.system, item.metric) == (name, system, metric):
                return item.value
        return None

    def write_json(self, path: Path) -> None:
        payload = {"machine": machine(), "results": [asdict(item) for item in self.items],
                   "notes": self.notes}  # fmt: skip
        path.write_text(json.dumps(payload, indent=2) + "\n")


def machine() -> dict[str, object]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    if Path("/proc/meminfo").exists():
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_core_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def serve(
    command: list[str], port: int, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run ``command`` (which listens on ``port``) until the block ends; wait for /health.

    It runs in a neutral folder (default: the temporary folder), so that no conf.d or
    router.toml of the current folder changes what is measured; ``env`` is added to this
    process's environment.
    """
    log = open(os.devnull, "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=cwd or tempfile.gettempdir(),
        env={**os.environ, **(env or {})},
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {' '.join(command)}")
            time.sleep(0.05)
        yield Server(process, base_url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def write_tiny_models(folder: Path, names: str = "abc") -> None:
    """A tiny random-weight llama per name (``tests/tiny_models.py``), NAME.gguf in ``folder``."""
    from tests.tiny_models import write_tiny_llama

    for seed, name in enumerate(names):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed, context_length=8192)


def our_child(model: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "router", "child", "-m", str(model), "--port", str(port),
            "--alias", model.stem, *args]  # fmt: skip


def our_router(models_dir: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "router", "serve", "--models-dir", str(models_dir),
            "--port", str(port), "--no-plugins", *args]  # fmt: skip


def llama_server(binary: Path, model: Path, port: int, *args: str) -> list[str]:
    return [str(binary), "-m", str(model), "--port", str(port), "--alias", model.stem,
            "--no-webui", *args]  # fmt: skip


def llama_cpp_router(binary: Path, models_dir: Path, port: int, *args: str) -> list[str]:
    return [str(binary), "--models-dir", str(models_dir), "--port", str(port), "--no-webui",
            *args]  # fmt: skip


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used by ``pid`` itself so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _proc_stats() -> dict[int, list[str]]:
    """Every live process's /proc/PID/stat fields after the command name (state, ppid, ...)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
    return stats


def process_tree(pid: int, stats: dict[int, list[str]] | None = None) -> set[int]:
    """``pid`` and every live process descended from it."""
    stats = _proc_stats() if stats is None else stats
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, fields in stats.items():
            if int(fields[1]) in tree and child not in tree:
                tree.add(child)
                grew = True
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and every process descended from it, summed."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time used so far by the whole machine and by this process's tree (the bench and the
    servers it started), to tell what other processes took while a measurement ran."""

    wall: float
    machine_s: float
    ours_s: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (user + nice + system + irq + softirq + steal) / ticks
        return cls(time.monotonic(), busy, tree_cpu_seconds(os.getpid()))

    def busy_share(self, later: CpuSnapshot | None = None) -> float:
        """Share of all CPUs that every process together used since this snapshot."""
        later = later or CpuSnapshot.take()
        elapsed = (later.wall - self.wall) * (os.cpu_count() or 1)
        return (later.machine_s - self.machine_s) / elapsed if elapsed > 0 else 0.0

    def foreign_share(self, later: CpuSnapshot | None = None) -> float:
        """Share of all CPUs that other processes used between this snapshot and ``later``."""
        later = later or CpuSnapshot.take()
        elapsed = (later.wall - self.wall) * (os.cpu_count() or 1)
        foreign = (later.machine_s - self.machine_s) - (later.ours_s - self.ours_s)
        return max(0.0, foreign / elapsed) if elapsed > 0 else 0.0


def wait_until_quiet(max_share: float, timeout_s: float) -> float:
    """Wait (at most ``timeout_s``) for a second in which other processes use less than
    ``max_share`` of the CPUs; returns the last second's share."""
    deadline = time.monotonic() + timeout_s
    while True:
        start = CpuSnapshot.take()
        time.sleep(1.0)
        share = start.foreign_share()
        if share < max_share or time.monotonic() > deadline:
            return share


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, those alive now."""
    stats = _proc_stats()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(
        (int(stats[member][11]) + int(stats[member][12])) / ticks
        for member in process_tree(pid, stats)
        if member in stats
    )
