"""The measurements. Each section starts the systems it compares, measures them in the same run
(interleaved where it matters), and adds Results."""

from __future__ import annotations

import contextlib
import ctypes
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import trio

from bench import engine as bench_engine
from bench import harness
from bench.harness import Results, median, percentile


@dataclass(frozen=True)
class Setup:
    tiny_dir: Path  # three tiny models: a, b, c
    gemma: Path | None
    llama_server: Path | None
    threads: int
    quick: bool
    progress: Callable[[str], None]
    child_ctx_per_slot: bool = False  # the child before issue 11: its -c is per slot
    settle_s: float = 0.0  # the latency section's quiet after each request (--settle-ms)

    @property
    def gemma_dir(self) -> Path | None:
        return self.gemma.parent if self.gemma else None


COMPLETION = "/v1/completions"


# What a request sent on a kept-alive connection meets when the server has closed it.
CLOSED_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _one_token(client: httpx.Client, base: str, model: str) -> float:
    return _one_token_dropped(client, base, model)[0]


def _one_token_dropped(client: httpx.Client, base: str, model: str) -> tuple[float, bool]:
    """(ms, whether the first send was dropped unanswered on a closed keep-alive connection)."""
    body = {"model": model, "prompt": "x", "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    dropped = False
    try:
        response = client.post(base + COMPLETION, json=body)
    except CLOSED_CONNECTION:
        # llama-server closes a keep-alive connection after a few requests; a request that
        # raced with that close is counted, sent again, and timed from the new send.
        dropped = True
        start = time.perf_counter()
        response = client.post(base + COMPLETION, json=body)
    response.raise_for_status()
    return (time.perf_counter() - start) * 1000, dropped


def _stream(
    base: str, model: str, prompt: str | list[int], tokens: int
) -> tuple[float, float, int]:
    """(time to first token s, decode tokens/s after it, tokens) for one greedy stream."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    with httpx.stream("POST", base + COMPLETION, json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return first - start, rate, count


def _ensure_loaded(base: str, model: str) -> None:
    """Load ``model`` first where the server is a router (a no-op for a plain server)."""
    response = httpx.get(base + "/models", timeout=10)
    entries = response.json().get("data", []) if response.status_code == 200 else []
    if not any("status" in entry for entry in entries):
        return
    httpx.post(base + "/models/load", json={"model": model}, timeout=10)
    _wait_status(base, model, "loaded")


def _wait_status(base: str, model: str, value: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in httpx.get(base + "/models", timeout=10).json()["data"]:
            if entry["id"] == model and entry["status"]["value"] == value:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{model} did not become {value}")


# ---- 1. added latency ------------------------------------------------------------------------


def added_latency(setup: Setup, results: Results) -> None:
    """A 1-token completion, through each router and straight to its kind of child: all four
    servers up at once, each router and its child asked in turn, the two pairs by turns of
    a block, so that a change in the machine's load over the run weighs on both routers."""
    n = 60 if setup.quick else 1000
    args = ["-t", "1", "-c", "512"]
    with _side_by_side(setup, setup.tiny_dir / "a.gguf", args) as (systems, pairs, _):
        samples, drops = _interleaved_latencies(
            systems, pairs, "a", n, setup.progress, settle_s=setup.settle_s
        )
    if setup.settle_s:
        results.note(f"Latency rows: {setup.settle_s * 1000:g} ms of quiet after each request.")
    for system, values in samples.items():
        for fraction, label in ((0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")):
            results.add("one_token_latency", system, label, percentile(values, fraction), "ms")
    for system, count in drops.items():  # one keep-alive client each, n + 20 requests
        results.add("keepalive_drops", system, "dropped", count, "count")
        results.add("keepalive_drops", system, "requests", n + WARM_UP, "count")
    for baseline, router in pairs:
        added = percentile(samples[router], 0.5) - percentile(samples[baseline], 0.5)
        results.add("added_latency", router, "p50_added_ms", added, "ms")
        ratio = percentile(samples[router], 0.5) / percentile(samples[baseline], 0.5)
        results.add("added_latency", router, "p50_ratio", ratio, "x")


@contextlib.contextmanager
def _side_by_side(
    setup: Setup, model: Path, args: list[str]
) -> Iterator[tuple[dict[str, str], list[tuple[str, str]], dict[str, int]]]:
    """Our child and our router over ``model`` (its folder, for the router), and with
    ``--llama-server`` llama-server and llama.cpp's router, all up for the block: their base
    URLs by system, the pairs (child, its router), and their process ids by system."""
    commands = {
        "direct": (harness.our_child, model),
        "llama-router": (harness.our_router, model.parent),
    }
    pairs = [("direct", "llama-router")]
    if setup.llama_server:
        binary = setup.llama_server
        commands["llama-server"] = (partial(harness.llama_server, binary), model)
        commands["llama.cpp-router"] = (partial(harness.llama_cpp_router, binary), model.parent)
        pairs.append(("llama-server", "llama.cpp-router"))
    with contextlib.ExitStack() as stack:
        systems, pids = {}, {}
        for system, (command, path) in commands.items():
            port = harness.free_port()
            server = stack.enter_context(harness.serve(command(path, port, *args), port))
            systems[system], pids[system] = server.base_url, server.pid
        yield systems, pairs, pids


WARM_UP = 20


def _interleaved_latencies(
    systems: dict[str, str],
    pairs: list[tuple[str, str]],
    model: str,
    n: int,
    progress: Callable[[str], None],
    *,
    settle_s: float = 0.0,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Latencies in ms of n 1-token requests per system, and how many requests each one's
    keep-alive connection dropped unanswered (the client reuses one connection per system).

    Each pair (a router and its child) is asked in turns, request by request; the pairs take
    turns by blocks of ``LATENCY_BLOCK``. A pair is never asked right after the other: what a
    server leaves running after its answer (llama.cpp's threads poll for work a while) would
    slow the next server asked, whichever it is. ``settle_s`` of quiet after each request
    (``--settle-ms``) lets a router's work after its answer (its log line, its metrics) end
    before the request to its child that follows, and the CPUs go idle, as between a lone
    user's requests: each thread a request wakes then wakes an idle CPU (slower on a VM).
    """
    samples: dict[str, list[float]] = {name: [] for name in systems}
    drops = dict.fromkeys(systems, 0)
    clients = {name: httpx.Client(timeout=60) for name in systems}
    for base in systems.values():
        _ensure_loaded(base, model)
    try:
        for name, base in systems.items():
            for _ in range(WARM_UP):  # warm-up: loads the model, fills keep-alive pools
                drops[name] += _one_token_dropped(clients[name], base, model)[1]
        for start in range(0, n, LATENCY_BLOCK):
            for pair in pairs:
                for _ in range(min(LATENCY_BLOCK, n - start)):
                    for name in pair:
                        milliseconds, dropped = _one_token_dropped(
                            clients[name], systems[name], model
                        )
                        samples[name].append(milliseconds)
                        drops[name] += dropped
                        if settle_s:
                            time.sleep(settle_s)
            progress(f"latency {min(start + LATENCY_BLOCK, n)}/{n}")
    finally:
        for client in clients.values():
            client.close()
    return samples, drops


LATENCY_BLOCK = 100


# ---- 2. streaming ----------------------------------------------------------------------------


def streaming(setup: Setup, results: Results) -> None:
    """A greedy stream of Gemma (or a tiny model in --quick) through each router vs straight
    to its kind of child (ours; llama.cpp's when ``--llama-server`` is given)."""
    model = setup.gemma if setup.gemma and not setup.quick else setup.tiny_dir / "a.gguf"
    tokens = 32 if setup.quick else 256
    rounds = 2 if setup.quick else 9
    args = ["-t", str(setup.threads), "-c", "2048"]
    name = f"stream_{model.stem}"
    runs: dict[str, list[tuple[float, float, int]]] = {}
    router_cpu_s: dict[str, float] = {}  # a router process's own CPU over its streams
    with _side_by_side(setup, model, args) as (systems, pairs, pids):
        routers = {router for _, router in pairs}
        for base in systems.values():
            _ensure_loaded(base, model.stem)
            _stream(base, model.stem, "Once upon a time", 4)
        for round_index in range(rounds):
            # Each round a stream through each router and one straight to its child, in turns
            # first and second, so that a drift of the machine's speed over the run weighs on
            # both alike; a ratio is the median of its pairs'.
            for pair in pairs:
                for system in reversed(pair) if round_index % 2 == 0 else pair:
                    used_s = harness.process_cpu_seconds(pids[system])
                    run = _stream(systems[system], model.stem, "Once upon a time", tokens)
                    runs.setdefault(system, []).append(run)
                    if system in routers:
                        used_s = harness.process_cpu_seconds(pids[system]) - used_s
                        router_cpu_s[system] = router_cpu_s.get(system, 0.0) + used_s
            setup.progress(f"streaming round {round_index + 1}/{rounds}")
    for system, values in runs.items():
        results.add(name, system, "ttft_ms", median([v[0] for v in values]) * 1000, "ms")
        results.add(name, system, "tokens_per_s", median([v[1] for v in values]), "tok/s")
    for system, cpu_s in router_cpu_s.items():
        # On two cores the router's CPU an event is taken from the decode threads. Over all
        # its streams: the kernel counts CPU time in ticks of 10 ms.
        events = sum(run[2] for run in runs[system])
        results.add(name, system, "router_cpu_us_per_event", cpu_s / events * 1e6, "µs")
    for child, router in pairs:
        ratio = median([r[1] / c[1] for r, c in zip(runs[router], runs[child], strict=True)])
        results.add(name, router, "tokens_per_s_ratio", ratio, "x")


# ---- 3. cold start and 4. swap ---------------------------------------------------------------


def cold_start_and_swap(setup: Setup, results: Results) -> None:
    """Request to first byte for an unloaded model; seconds per swap with --models-max 1,
    back to back and with a second between swaps."""
    rounds = 2 if setup.quick else 5
    routers = {"llama-router": harness.our_router}
    if setup.llama_server:
        binary = setup.llama_server
        routers["llama.cpp-router"] = lambda d, p, *a: harness.llama_cpp_router(binary, d, p, *a)
    targets = [(setup.tiny_dir, "a", "tiny")]
    if setup.gemma and not setup.quick:
        targets.append((setup.gemma.parent, setup.gemma.stem, "gemma"))
    for system, command in routers.items():
        for folder, model, label in targets:
            port = harness.free_port()
            args = ["-t", str(setup.threads), "-c", "2048", "--models-max", "1"]
            with harness.serve(command(folder, port, *args), port) as router:
                idle, at_once = [], []
                for _ in range(rounds):
                    # After 2 s with nothing to do (a router's spare, if any, is ready), and
                    # right after the unload (a spare may still be starting).
                    for pause, times in ((2.0, idle), (0.0, at_once)):
                        _ensure_loaded(router.base_url, model)
                        httpx.post(router.base_url + "/models/unload", json={"model": model})
                        _wait_status(router.base_url, model, "unloaded")
                        time.sleep(pause)
                        times.append(_first_byte_s(router.base_url, model))
                name = f"cold_start_{label}"
                results.add(name, system, "first_byte_s", median(idle), "s")
                results.add(name, system, "first_byte_s_after_unload", median(at_once), "s")
                setup.progress(f"cold start {label} on {system}")
        port = harness.free_port()
        args = ["-t", "1", "-c", "512", "--models-max", "1"]
        with harness.serve(command(setup.tiny_dir, port, *args), port) as router:
            with httpx.Client(timeout=120) as client:
                _ensure_loaded(router.base_url, "a")
                _one_token(client, router.base_url, "a")
                swaps, spaced = [], []
                for index in range(4 if setup.quick else 10):
                    model = "b" if index % 2 == 0 else "a"
                    swaps.append(_one_token(client, router.base_url, model) / 1000)
                for index in range(4 if setup.quick else 10):
                    time.sleep(1.0)  # a pause, as between real users' requests
                    model = "b" if index % 2 == 0 else "a"
                    spaced.append(_one_token(client, router.base_url, model) / 1000)
            results.add("swap_tiny", system, "seconds_per_swap", median(swaps), "s")
            results.add("swap_tiny", system, "seconds_per_swap_spaced", median(spaced), "s")
            setup.progress(f"swaps on {system}")


def _first_byte_s(base: str, model: str) -> float:
    body = {"model": model, "prompt": "x", "max_tokens": 1, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", base + COMPLETION, json=body, timeout=300) as response:
        for _ in response.iter_raw():
            return time.perf_counter() - start
    return time.perf_counter() - start


# ---- 5. load ---------------------------------------------------------------------------------


def load(setup: Setup, results: Results) -> None:
    """N concurrent clients over three models with --models-max 2, on each router: requests/s,
    latency, errors, and where the CPU went (router, the bench's client, the whole machine)."""
    args = ["-t", "1", "-c", "512", "--models-max", "2", "-np", "2"]
    port = harness.free_port()
    command = harness.our_router(setup.tiny_dir, port, *args, "--max-queue", "256")
    _load_router(setup, results, "llama-router", command, port)
    if setup.llama_server:
        port = harness.free_port()
        command = harness.llama_cpp_router(setup.llama_server, setup.tiny_dir, port, *args)
        _load_router(setup, results, "llama.cpp-router", command, port)


def _load_router(
    setup: Setup, results: Results, system: str, command: list[str], port: int
) -> None:
    levels = [1, 8] if setup.quick else [1, 8, 32, 128]
    with harness.serve(command, port) as router:
        with httpx.Client(timeout=120) as client:  # load two models, start the spares
            for model in "abcab":
                _one_token(client, router.base_url, model)
        for clients in levels:
            per_client = 4 if setup.quick else max(4, 640 // clients)  # 640 requests a level
            cpu_before = harness.process_cpu_seconds(router.pid)
            run = trio.run(_load_run, router.base_url, clients, per_client)
            cpu = harness.process_cpu_seconds(router.pid) - cpu_before
            name = f"load_c{clients}"
            results.add(name, system, "requests_per_s", len(run.latencies) / run.wall_s, "req/s")
            results.add(name, system, "p50_ms", percentile(run.latencies, 0.5) * 1000, "ms")
            results.add(name, system, "p99_ms", percentile(run.latencies, 0.99) * 1000, "ms")
            results.add(name, system, "errors", run.errors, "count")
            results.add(name, system, "closed_connection", run.closed, "count")
            results.add(name, system, "router_cpu_s", cpu, "s")
            results.add(name, system, "client_cpu_s", run.client_cpu_s, "s")
            results.add(name, system, "cpu_busy_pct", run.busy * 100, "%")
            results.add(name, system, "wall_s", run.wall_s, "s")
            setup.progress(f"load with {clients} clients on {system}")
        results.add("load", system, "router_peak_rss_mib",
                    harness.peak_rss_bytes(router.pid) / 2**20, "MiB")  # fmt: skip


@dataclass
class LoadRun:
    latencies: list[float]  # seconds, of the requests answered 200
    errors: int
    closed: int  # of the errors: a connection closed with no answer
    wall_s: float
    client_cpu_s: float  # the bench's own CPU meanwhile (it shares the machine's CPUs)
    busy: float  # share of all CPUs that every process used meanwhile


async def _load_run(base: str, clients: int, per_client: int) -> LoadRun:
    latencies: list[float] = []
    errors = closed = 0
    rng = random.Random(clients)

    async def one_client(client: httpx.AsyncClient) -> None:
        nonlocal errors, closed
        for _ in range(per_client):
            body = {"model": rng.choice("abc"), "prompt": "x", "max_tokens": 4,
                    "ignore_eos": True}  # fmt: skip
            start = time.perf_counter()
            try:
                response = await client.post(COMPLETION, json=body)
                if response.status_code != 200:
                    errors += 1
                    continue
            except httpx.HTTPError as error:
                errors += 1
                closed += isinstance(error, CLOSED_CONNECTION)
                continue
            latencies.append(time.perf_counter() - start)

    # One client, so one keep-alive connection, per user, made before the clock starts (an
    # httpx client costs ~20 ms of CPU to make): one httpx pool shared by 128 connections
    # spends O(connections) of the bench's CPU on every request it places, on the CPUs the
    # routers need (httpcore's _assign_requests_to_connections).
    async with contextlib.AsyncExitStack() as stack:
        users = [await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=300))
                 for _ in range(clients)]  # fmt: skip
        start, cpu, machine = time.perf_counter(), time.process_time(), harness.CpuSnapshot.take()
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(one_client, user)
        wall, busy = time.perf_counter() - start, machine.busy_share()
        return LoadRun(latencies, errors, closed, wall, time.process_time() - cpu, busy)


# ---- 6. backends -----------------------------------------------------------------------------


def backends(setup: Setup, results: Results) -> list[str]:
    """The ggml devices this llama-cpp-python can use, and pp512/tg128 on each offload setting."""
    import llama_cpp

    devices = list_devices()
    setup.progress("devices: " + ", ".join(devices))
    model = setup.gemma if setup.gemma and not setup.quick else setup.tiny_dir / "a.gguf"
    offloads = [0] if not llama_cpp.llama_supports_gpu_offload() else [0, -1]
    for n_gpu_layers in offloads:
        llama = llama_cpp.Llama(str(model), n_ctx=1024, n_batch=512, n_threads=setup.threads,
                                n_gpu_layers=n_gpu_layers, verbose=False)  # fmt: skip
        try:
            system = f"ngl{'all' if n_gpu_layers else 0}"
            vocabulary = llama.n_vocab()
            prompt = [llama.token_bos()] + [(1000 + i) % vocabulary for i in range(511)]
            llama.reset()
            start = time.perf_counter()
            llama.eval(prompt)
            results.add("pp512", system, "tokens_per_s", 512 / (time.perf_counter() - start),
                        "tok/s")  # fmt: skip
            tokens = 32 if setup.quick else 128
            start = time.perf_counter()
            for index in range(tokens):
                llama.eval([(1000 + index) % vocabulary])
            results.add(f"tg{tokens}", system, "tokens_per_s",
                        tokens / (time.perf_counter() - start), "tok/s")  # fmt: skip
        finally:
            llama.close()
    return devices


def list_devices() -> list[str]:
    """Every device the bundled ggml registers: "CPU: ...", "CUDA0: ...", ..."""
    import llama_cpp

    library_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(library_dir.glob("libggml.so*")) + sorted(library_dir.glob("libggml.dylib"))
    if not candidates:
        return ["unknown (libggml not found)"]
    ggml = ctypes.CDLL(str(candidates[0]))
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_description.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    devices = []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        name = ggml.ggml_backend_dev_name(device).decode()
        description = ggml.ggml_backend_dev_description(device).decode()
        devices.append(f"{name}: {description}")
    return devices


# ---- 8. engine -------------------------------------------------------------------------------


def engine(setup: Setup, results: Results) -> None:
    """Our child against llama-server: issue 11's table (bench/engine.py)."""
    if setup.llama_server is None:
        setup.progress("engine: skipped (no --llama-server)")
        return
    model = setup.gemma if setup.gemma and not setup.quick else setup.tiny_dir / "a.gguf"
    bench_engine.run(
        bench_engine.EngineSetup(
            tiny=setup.tiny_dir / "a.gguf",
            model=model,
            llama_server=setup.llama_server,
            threads=setup.threads,
            quick=setup.quick,
            child_ctx_per_slot=setup.child_ctx_per_slot,
            progress=setup.progress,
        ),
        results,
    )


SECTIONS = {
    "latency": added_latency,
    "streaming": streaming,
    "cold": cold_start_and_swap,
    "load": load,
    "backends": backends,
    "engine": engine,
}
