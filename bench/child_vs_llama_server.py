"""Streamed greedy generation through our child vs llama.cpp's llama-server, side by side.

Both serve the same GGUF with the same thread count and context size; requests alternate
between them so that machine noise hits both alike. Reported: decode tokens/s (first token to
last), time to first token, and our/their ratio. Usage:

    .venv/bin/python bench/child_vs_llama_server.py --llama-server PATH/llama-server \\
        --model models/gemma-3-270m-q4_k_m.gguf [--tokens 128] [--rounds 5]

Build llama-server from the llama.cpp that llama-cpp-python vendors: see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from router.cpu import physical_core_count

PROMPT = "Write a long story about a lighthouse keeper who finds a map."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(command: list[str], port: int) -> Iterator[str]:
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start")
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def one_stream(base: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, decode tokens/s after it, tokens) for one streamed completion."""
    body = {
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                now = time.perf_counter()
                if n == 0:
                    first = now
                last = now
                n += 1
    return first - start, (n - 1) / (last - first), n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/gemma-3-270m-q4_k_m.gguf"))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=physical_core_count())
    parser.add_argument("--ctx-size", type=int, default=4096)
    args = parser.parse_args()

    common = ["-m", str(args.model), "-t", str(args.threads), "-c", str(args.ctx_size)]
    ours_port, theirs_port = free_port(), free_port()
    ours_cmd = [sys.executable, "-m", "router", "child", *common, "--port", str(ours_port)]
    theirs_cmd = [
        str(args.llama_server),
        *common,
        "--port",
        str(theirs_port),
        "-np",
        "1",
        "--no-webui",
    ]
    results: dict[str, list[tuple[float, float, int]]] = {
        "llama-router child": [],
        "llama-server": [],
    }
    with server(ours_cmd, ours_port) as ours, server(theirs_cmd, theirs_port) as theirs:
        for base in (ours, theirs):
            one_stream(base, 8)  # warm-up
        for _ in range(args.rounds):
            results["llama-router child"].append(one_stream(ours, args.tokens))
            results["llama-server"].append(one_stream(theirs, args.tokens))

    print(
        f"model {args.model.name}, {args.threads} threads, {args.tokens} tokens, "
        f"{args.rounds} rounds (median)"
    )
    medians = {}
    for name, runs in results.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        tps = statistics.median(r[1] for r in runs)
        medians[name] = tps
        print(f"  {name:20s} decode {tps:7.1f} tok/s   first token {ttft:6.1f} ms")
    ratio = medians["llama-router child"] / medians["llama-server"]
    print(f"  ratio child/llama-server: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
