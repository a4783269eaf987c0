"""Probes for ``router_profile.md``: where the router's time goes, one question each.

Unlike ``python -m bench``, these compare nothing with llama.cpp: they answer the questions a
profile raises, on a tiny model that they write themselves, and print one line per round.

    python -m bench.probes added [--rounds 3] [--requests 2000] [--profile OUT]
        A 1-token completion through the router, then straight to a child of the same model,
        in turns on one keep-alive connection each: p50 of both, what the router adds, and
        the router's CPU per request (user + system time over the round). ``--profile``
        runs the router under cProfile and writes its stats to OUT.
    python -m bench.probes floor [--rounds 3] [--requests 2000]
        The same with the least relay trio allows in place of the router: it reads a request
        (its head and ``Content-Length``), sends it to the child on a kept connection, reads
        the answer the same way and sends it back. What a Python relay cannot avoid.
    python -m bench.probes stream [--rounds 3]
        One long stream of a tiny model through the router: its CPU per event.
    python -m bench.probes cold [--rounds 8]
        Load, unload, load again, then three streamed 1-token requests: each one's time to
        its first byte (the spare that replaces the one a load took starts meanwhile).
    python -m bench.probes child [--rounds 6] [--requests 500] [--base DIR] [--llama-server BIN]
        Our child alone, a 1-token completion with the default sampling, in turns (a block of
        requests each) with the child of another checkout of the project (``--base``: its
        folder, e.g. a ``git worktree`` of the commit before a change) and with llama-server:
        each one's p50 and CPU a request, over all rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import trio

from bench import harness
from bench.sections import COMPLETION, _ensure_loaded, _first_byte_s, _wait_status

ONE_TOKEN = {"model": "a", "prompt": "hi", "max_tokens": 1}
REPO = Path(__file__).resolve().parent.parent  # where ``python -m bench.probes`` runs


@contextmanager
def tiny_models() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        harness.write_tiny_models(Path(scratch), "ab")
        yield Path(scratch)


def in_turns(
    through: httpx.Client, direct: httpx.Client, requests: int, pid: int
) -> tuple[float, float, float]:
    """(p50 through ms, p50 direct ms, CPU µs of process ``pid`` per request through)."""
    times: dict[httpx.Client, list[float]] = {through: [], direct: []}
    used = harness.process_cpu_seconds(pid)
    for _ in range(requests):
        for client in (through, direct):
            start = time.perf_counter()
            client.post(COMPLETION, json=ONE_TOKEN).raise_for_status()
            times[client].append(time.perf_counter() - start)
    per_request_us = (harness.process_cpu_seconds(pid) - used) / requests * 1e6
    return (
        statistics.median(times[through]) * 1000,
        statistics.median(times[direct]) * 1000,
        per_request_us,
    )


def added(args: argparse.Namespace, relay: Callable[[int, int], list[str]] | None) -> None:
    """The ``added`` and ``floor`` probes: ``relay(port, child_port)`` is the command of what
    stands between client and child (None: the router)."""
    with tiny_models() as folder, ExitStack() as stack:
        child_port, port = harness.free_port(), harness.free_port()
        args_ = ["-t", "1", "-c", "512"]
        child = stack.enter_context(
            harness.serve(harness.our_child(folder / "a.gguf", child_port, *args_), child_port)
        )
        cwd = None  # the router: a neutral folder, as in the bench
        if relay is None:
            out = str(Path(args.profile).resolve()) if args.profile else ""
            profile = ["-m", "cProfile", "-o", out] if out else []
            command = harness.our_router(folder, port, *args_, "--spares", "0")
            command[1:1] = profile
        else:
            command, cwd = relay(port, child_port), REPO
        front = stack.enter_context(harness.serve(command, port, cwd=cwd))
        _ensure_loaded(front.base_url, "a")
        through = stack.enter_context(httpx.Client(base_url=front.base_url, timeout=60))
        direct = stack.enter_context(httpx.Client(base_url=child.base_url, timeout=60))
        in_turns(through, direct, 100, front.pid)  # warm-up
        for _ in range(args.rounds):
            p50, p50_direct, cpu_us = in_turns(through, direct, args.requests, front.pid)
            print(
                f"p50 {p50:.3f} ms, direct {p50_direct:.3f} ms, added {p50 - p50_direct:+.3f} ms;"
                f" CPU {cpu_us:.0f} µs a request",
                flush=True,
            )


def floor_relay(port: int, child_port: int) -> list[str]:
    return [sys.executable, "-m", "bench.probes", "_relay", str(port), str(child_port)]


async def _relay_server(port: int, child_port: int) -> None:
    """The least relay: one kept connection to the child for each client connection."""

    async def message(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            data = await stream.receive_some(65536)
            if not data:
                return None
            buffer += data
        head = bytes(buffer[: end + 4])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buffer) < end + 4 + length:
            data = await stream.receive_some(65536)
            if not data:
                return None
            buffer += data
        whole = bytes(buffer[: end + 4 + length])
        del buffer[: end + 4 + length]
        return whole

    async def handle(client: trio.SocketStream) -> None:
        from_client, from_child = bytearray(), bytearray()
        async with await trio.open_tcp_stream("127.0.0.1", child_port) as child:
            while (request := await message(client, from_client)) is not None:
                await child.send_all(request)
                answer = await message(child, from_child)
                if answer is None:
                    return
                await client.send_all(answer)

    await trio.serve_tcp(handle, port, host="127.0.0.1")


def stream(args: argparse.Namespace) -> None:
    with tiny_models() as folder:
        port = harness.free_port()
        command = harness.our_router(folder, port, "-t", "1", "-c", "4096", "--spares", "0")
        with harness.serve(command, port) as router, httpx.Client(timeout=120) as client:
            _ensure_loaded(router.base_url, "a")
            body = {"model": "a", "prompt": "x", "max_tokens": 3000, "ignore_eos": True,
                    "stream": True}  # fmt: skip
            for _ in range(args.rounds):
                used, events = harness.process_cpu_seconds(router.pid), 0
                with client.stream("POST", router.base_url + COMPLETION, json=body) as answer:
                    answer.raise_for_status()
                    for line in answer.iter_lines():
                        events += line.startswith("data: {")
                cpu_us = (harness.process_cpu_seconds(router.pid) - used) / max(events, 1) * 1e6
                print(f"{events} events, router CPU {cpu_us:.0f} µs an event", flush=True)


def cold(args: argparse.Namespace) -> None:
    with tiny_models() as folder:
        port = harness.free_port()
        command = harness.our_router(folder, port, "-t", "2", "-c", "2048", "--models-max", "1")
        with harness.serve(command, port) as router:
            base = router.base_url
            for _ in range(args.rounds):
                _ensure_loaded(base, "a")
                httpx.post(base + "/models/unload", json={"model": "a"}, timeout=30)
                _wait_status(base, "a", "unloaded")
                _ensure_loaded(base, "a")
                firsts = [_first_byte_s(base, "a") * 1000 for _ in range(3)]
                print("first byte, ms: " + " ".join(f"{ms:.0f}" for ms in firsts), flush=True)


def child(args: argparse.Namespace) -> None:
    with tiny_models() as folder, ExitStack() as stack:
        servers: dict[str, harness.Server] = {}
        checkouts = {"child": REPO, "base": Path(args.base).resolve() if args.base else None}
        for name, checkout in checkouts.items():
            if checkout is not None:
                port = harness.free_port()
                command = harness.our_child(folder / "a.gguf", port, "-t", "1", "-c", "512")
                servers[name] = stack.enter_context(
                    harness.serve(command, port, env={"PYTHONPATH": str(checkout)})
                )
        if args.llama_server:
            port = harness.free_port()
            command = harness.llama_server(
                Path(args.llama_server), folder / "a.gguf", port, "-t", "1", "-c", "512"
            )
            servers["llama-server"] = stack.enter_context(harness.serve(command, port))
        clients = {
            name: stack.enter_context(httpx.Client(base_url=server.base_url, timeout=60))
            for name, server in servers.items()
        }
        body = {"prompt": "hi", "max_tokens": 1}  # llama-server's default sampling
        times: dict[str, list[float]] = {name: [] for name in servers}
        cpu = dict.fromkeys(servers, 0.0)
        for client in clients.values():
            for _ in range(100):  # warm-up
                client.post(COMPLETION, json=body).raise_for_status()
        for _ in range(args.rounds):
            for name, client in clients.items():
                used = harness.process_cpu_seconds(servers[name].pid)
                for _ in range(args.requests):
                    start = time.perf_counter()
                    client.post(COMPLETION, json=body).raise_for_status()
                    times[name].append(time.perf_counter() - start)
                cpu[name] += harness.process_cpu_seconds(servers[name].pid) - used
        for name, values in times.items():
            p50 = statistics.median(values) * 1000
            cpu_us = cpu[name] / len(values) * 1e6
            print(f"{name}: p50 {p50:.3f} ms, CPU {cpu_us:.0f} µs a request", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["_relay"]:  # floor_relay's process
        trio.run(_relay_server, int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench.probes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("probe", choices=["added", "floor", "stream", "cold", "child"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", help="added: write the router's cProfile stats here")
    parser.add_argument("--base", help="child: another checkout's folder, its child compared")
    parser.add_argument("--llama-server", help="child: llama-server's binary, compared too")
    args = parser.parse_args()
    if args.probe == "added":
        added(args, None)
    elif args.probe == "floor":
        added(args, floor_relay)
    elif args.probe == "stream":
        stream(args)
    elif args.probe == "child":
        child(args)
    else:
        cold(args)


if __name__ == "__main__":
    main()
