"""The child's engine against llama-server on the same GGUF, flags and threads: issue 11's table.

Every figure is measured on both servers in the same run, interleaved where the order could
matter, and reported side by side with its ratio (bench/report.py):

* a 1-token completion of a tiny GGUF and ``GET /health``, straight to each server over TCP
  (one keep-alive httpx client each), p50;
* aggregate tokens/s of 1, 4, 8 and 16 concurrent greedy streams (``ignore_eos``) of Gemma;
* time to first token of a chat's second turn after a ~1,500-token history (prompt cache: the
  first request primes the history, the second adds a short turn; ``cache_prompt`` default);
* resident memory of each process tree with ``-np 8``, after load and after a run.

Both servers get the same ``-c`` (the total context, divided among the ``-np`` slots, as
llama-server does) and ``-np``. ``--child-ctx-per-slot`` is for the engine before issue 11,
which gave every slot the whole ``-c``: it then gets ``-c total/np``, the same KV per slot.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from bench import harness
from bench.harness import Results, median

T = TypeVar("T")
COMPLETION = "/v1/completions"
CHAT = "/v1/chat/completions"
OURS = "direct"  # our child, served straight over TCP (the name every section uses)
THEIRS = "llama-server"
STREAM_PROMPT = "Once upon a time"


@dataclass(frozen=True)
class Layout:
    """The context and slots both servers get: ``ctx_total`` tokens among ``parallel`` slots."""

    ctx_total: int
    parallel: int

    @property
    def ctx_per_slot(self) -> int:
        return self.ctx_total // self.parallel

    def args(self, *, per_slot: bool = False) -> list[str]:
        ctx = self.ctx_per_slot if per_slot else self.ctx_total
        return ["-c", str(ctx), "-np", str(self.parallel)]


# 16 slots of 2048 tokens: 16 streams of 128 tokens fit with room to spare, and one slot holds
# the ~1,500-token history, its second turn and the reply. Memory is measured with -np 8 and
# the same 2048 tokens per slot.
STREAMS_LAYOUT = Layout(ctx_total=32768, parallel=16)
MEMORY_LAYOUT = Layout(ctx_total=16384, parallel=8)
QUICK_STREAMS_LAYOUT = Layout(ctx_total=8192, parallel=4)
LATENCY_ARGS = ["-t", "1", "-c", "512"]  # one slot: the same for either meaning of -c


@dataclass(frozen=True)
class EngineSetup:
    """What the engine section needs from the command line (bench/__main__.py)."""

    tiny: Path  # a tiny GGUF, for the latency rows
    model: Path  # Gemma, or the tiny model with --quick
    llama_server: Path
    threads: int
    quick: bool
    child_ctx_per_slot: bool
    progress: Callable[[str], None]


# Both servers render chats with ChatML: llama-server (this build, defaults) renders Gemma 3's
# chats with ChatML rather than the GGUF's template, our child with the GGUF's, so without it
# the 2nd-turn row would compare prompts of different lengths (1,593 vs 1,507 tokens).
CHAT_TEMPLATE = ["--chat-template", "chatml"]


class Quiet:
    """Timed rounds on a machine that others share: a round starts once other processes leave
    the CPUs (almost) alone, and runs again, up to twice, when they took more than
    ``max_share`` of them meanwhile; the round they disturbed least is kept. Waiting and rounds
    run again stop after ``budget_s`` in all; none with --quick."""

    max_share = 0.15  # of all CPUs, used by other processes during a round
    wait_s = 30.0  # at most, for a quiet second before a round
    attempts = 3
    budget_s = 600.0  # at most, spent waiting and on rounds run again, in the whole run

    def __init__(self, setup: EngineSetup) -> None:
        self.enabled = not setup.quick
        self.progress = setup.progress
        self.kept: list[float] = []  # other processes' share during each round kept
        self.repeated = 0
        self.spent_s = 0.0

    def round(self, measure: Callable[[int], T], label: str) -> T:
        """``measure(attempt)``, on a quiet machine where it can be had."""
        best: tuple[T, float] | None = None
        attempts = self.attempts if self.enabled else 1
        for attempt in range(attempts):
            if self.enabled and self.spent_s < self.budget_s:
                waited = time.monotonic()
                harness.wait_until_quiet(self.max_share, self.wait_s)
                self.spent_s += time.monotonic() - waited
            start = harness.CpuSnapshot.take()
            value = measure(attempt)
            share = start.foreign_share()
            if attempt > 0:
                self.spent_s += time.monotonic() - start.wall
            if best is None or share < best[1]:
                best = (value, share)
            if share <= self.max_share or attempt + 1 == attempts or self.spent_s > self.budget_s:
                break
            self.repeated += 1
            self.progress(f"engine: {label}: other processes took {share:.0%} of the CPUs; again")
        assert best is not None
        self.kept.append(best[1])
        return best[0]

    def summary(self) -> str:
        if not self.kept:
            return ""
        return (f"Other processes used {median(self.kept):.0%} of the CPUs during the median "
                f"timed round kept, {max(self.kept):.0%} at most; {self.repeated} rounds were "
                f"run again because they took more than {self.max_share:.0%}.")  # fmt: skip


def run(setup: EngineSetup, results: Results) -> None:
    """Every row of the table, both servers, one run."""
    load_before = os.getloadavg()[0]
    quiet = Quiet(setup)
    start = harness.CpuSnapshot.take()
    request_latency(setup, results)
    results.note(f"During the latency rows other processes used {start.foreign_share():.0%} "
                 "of the CPUs.")  # fmt: skip
    throughput_and_second_turn(setup, results, quiet)
    memory(setup, results)
    results.note(quiet.summary())
    results.note(f"Load average (1 min) {load_before:.2f} at the start, "
                 f"{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} CPUs.")  # fmt: skip


def _servers(
    stack: ExitStack, setup: EngineSetup, model: Path, ours: list[str], theirs: list[str]
) -> dict[str, str]:
    child_port, server_port = harness.free_port(), harness.free_port()
    child = stack.enter_context(
        harness.serve(harness.our_child(model, child_port, *ours), child_port)
    )
    server = stack.enter_context(
        harness.serve(harness.llama_server(setup.llama_server, model, server_port, *theirs),
                      server_port)
    )  # fmt: skip
    return {OURS: child.base_url, THEIRS: server.base_url}


# ---- 1-token completion and /health ----------------------------------------------------------


def request_latency(setup: EngineSetup, results: Results) -> None:
    """p50 of a 1-token completion and of GET /health, interleaved, one keep-alive client each."""
    n = 60 if setup.quick else 300
    with ExitStack() as stack:
        systems = _servers(stack, setup, setup.tiny, LATENCY_ARGS, LATENCY_ARGS)
        clients = {name: stack.enter_context(httpx.Client(timeout=60)) for name in systems}
        completion = {"model": setup.tiny.stem, "prompt": "x", "max_tokens": 1, "temperature": 0}
        samples: dict[tuple[str, str], list[float]] = {}
        for _ in range(20):  # warm-up: fills the keep-alive pools, first-request costs
            for name, base in systems.items():
                timed_request(clients[name], "POST", base + COMPLETION, completion)
                timed_request(clients[name], "GET", base + "/health")
        for index in range(n):
            for name, base in systems.items():
                samples.setdefault(("engine_one_token", name), []).append(
                    timed_request(clients[name], "POST", base + COMPLETION, completion)
                )
                samples.setdefault(("engine_health", name), []).append(
                    timed_request(clients[name], "GET", base + "/health")
                )
            if index % 100 == 0:
                setup.progress(f"engine: latency {index}/{n}")
    for (row, system), values in samples.items():
        results.add(row, system, "p50_ms", median(values), "ms")


def timed_request(
    client: httpx.Client, method: str, url: str, body: dict[str, object] | None = None
) -> float:
    """Milliseconds for one request on a keep-alive connection.

    llama-server closes a keep-alive connection now and then; a request that raced with that
    close fails at once and is sent again on a new connection, timed from the new send.
    """
    for attempt in (1, 2):
        start = time.perf_counter()
        try:
            response = client.request(method, url, json=body)
        except httpx.RemoteProtocolError:
            if attempt == 2:
                raise
            continue
        response.raise_for_status()
        return (time.perf_counter() - start) * 1000
    raise AssertionError("unreachable")


# ---- concurrent streams and the second chat turn ---------------------------------------------


def throughput_and_second_turn(setup: EngineSetup, results: Results, quiet: Quiet) -> None:
    """Aggregate tokens/s of N concurrent greedy streams, then the prompt-cache row."""
    layout = QUICK_STREAMS_LAYOUT if setup.quick else STREAMS_LAYOUT
    levels = [1, 4] if setup.quick else [1, 4, 8, 16]
    tokens = 32 if setup.quick else 128
    rounds = 1 if setup.quick else 2
    one_stream_rounds = 2 if setup.quick else 5
    threads = ["-t", str(setup.threads), *CHAT_TEMPLATE]
    with ExitStack() as stack:
        systems = _servers(stack, setup, setup.model, [*threads, *layout.args(
            per_slot=setup.child_ctx_per_slot)], [*threads, *layout.args()])  # fmt: skip
        model = setup.model.stem
        for base in systems.values():
            trio.run(concurrent_tokens, base, model, 1, 8)  # warm-up
        results.note(
            f"Streams and second turn: {setup.model.name}, both servers "
            f"-c {layout.ctx_total} -np {layout.parallel} ({layout.ctx_per_slot} "
            f"tokens per slot){_per_slot_note(setup, layout)}, -t {setup.threads}, "
            "--chat-template chatml."
        )
        setup.progress(f"engine: streams on {setup.model.name}")
        order = list(systems.items())
        one: dict[str, list[float]] = {name: [] for name in systems}
        for index in range(one_stream_rounds):
            for name, base in order if index % 2 == 0 else reversed(order):
                measure = partial(streams_round, base, model, 1, tokens)
                one[name].append(quiet.round(measure, f"1 stream, {name}"))
        for name, values in one.items():
            results.add("engine_streams_1", name, "tokens_per_s", median(values), "tok/s")
        for streams in levels[1:]:
            many: dict[str, list[float]] = {name: [] for name in systems}
            for index in range(rounds):
                for name, base in order if index % 2 == 0 else reversed(order):
                    measure = partial(streams_round, base, model, streams, tokens)
                    many[name].append(quiet.round(measure, f"{streams} streams, {name}"))
            for name, values in many.items():
                results.add(f"engine_streams_{streams}", name, "tokens_per_s", median(values),
                            "tok/s")  # fmt: skip
            setup.progress(f"engine: {streams} streams")
        second_turn(setup, systems, results, quiet)


def _per_slot_note(setup: EngineSetup, layout: Layout) -> str:
    if not setup.child_ctx_per_slot:
        return ""
    return f"; the child, whose -c is per slot, -c {layout.ctx_per_slot}"


def streams_round(base: str, model: str, streams: int, tokens: int, _attempt: int) -> float:
    return trio.run(concurrent_tokens, base, model, streams, tokens)


async def concurrent_tokens(base: str, model: str, streams: int, tokens: int) -> float:
    """Aggregate generated tokens/s of ``streams`` greedy completions sent at once."""
    body = {"model": model, "prompt": STREAM_PROMPT, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    generated = 0
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def one() -> None:
            nonlocal generated
            response = await client.post(COMPLETION, json=body)
            response.raise_for_status()
            generated += response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
        return generated / (time.perf_counter() - start)


HISTORY_TEXT = (
    "the a river mountain city people walked along quiet road evening light morning bread "
    "market children laughed under old bridge while merchants counted coins and sailors told "
    "stories about distant islands storms lanterns gardens library teacher letter window "
    "winter summer harvest festival music dancing friend stranger journey village forest"
)
HISTORY_WORDS = HISTORY_TEXT.split()


def chat_history(seed: int, words: int) -> list[dict[str, str]]:
    """Four user/assistant exchanges of filler text, ``words`` words in all (about one Gemma
    token per word), ending with a user turn."""
    rng = random.Random(seed)
    per_message = words // 8
    messages = []
    for index in range(8):
        text = " ".join(rng.choice(HISTORY_WORDS) for _ in range(per_message)) + "."
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    messages.append({"role": "user", "content": "Tell me the story so far, briefly."})
    return messages


def second_turn(
    setup: EngineSetup, systems: dict[str, str], results: Results, quiet: Quiet
) -> None:
    """TTFT of a chat's second turn: one request primes a ~1,500-token history (its time is
    the uncached first turn), the next sends the history plus a short new turn. A fresh
    history for every round and every try, so nothing from an earlier one can be reused."""
    rounds = 1 if setup.quick else 3
    words = 200 if setup.quick else 1440  # the tiny model's tokens are bytes
    model = setup.model.stem
    first: dict[str, list[float]] = {name: [] for name in systems}
    second: dict[str, list[float]] = {name: [] for name in systems}
    history_tokens: dict[str, int] = {}
    with httpx.Client(timeout=600) as client:

        def one_round(base: str, seed: int, attempt: int) -> tuple[float, float, int]:
            """(1st turn ms, 2nd turn's TTFT ms, the history's tokens)"""
            history = chat_history(seed + attempt, words)
            follow_up = [*history, {"role": "assistant", "content": "Yes."},
                         {"role": "user", "content": "And then what happened?"}]  # fmt: skip
            start = time.perf_counter()
            response = client.post(base + CHAT, json={"model": model, "messages": history,
                                   "max_tokens": 1, "temperature": 0})  # fmt: skip
            response.raise_for_status()
            first_ms = (time.perf_counter() - start) * 1000
            tokens: int = response.json()["usage"]["prompt_tokens"]
            return first_ms, chat_ttft_ms(client, base, model, follow_up), tokens

        for index in range(rounds):
            for name, base in systems.items():
                measure = partial(one_round, base, 1000 + 10 * index)
                first_ms, second_ms, history_tokens[name] = quiet.round(
                    measure, f"2nd turn, {name}"
                )
                first[name].append(first_ms)
                second[name].append(second_ms)
    if len(set(history_tokens.values())) > 1:
        results.note(f"The history's prompt differs between the servers: {history_tokens} tokens.")
    for name in systems:
        results.add("engine_first_turn", name, "ttft_ms", median(first[name]), "ms")
        results.add("engine_second_turn", name, "ttft_ms", median(second[name]), "ms")
        results.add("engine_history", name, "prompt_tokens", history_tokens[name], "tokens")


def chat_ttft_ms(client: httpx.Client, base: str, model: str, messages: object) -> float:
    """Milliseconds from sending a streamed chat request to its first chunk of text."""
    body = {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    start = time.perf_counter()
    with client.stream("POST", base + CHAT, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                return (time.perf_counter() - start) * 1000
    return (time.perf_counter() - start) * 1000


# ---- resident memory -------------------------------------------------------------------------


def memory(setup: EngineSetup, results: Results) -> None:
    """RSS of each server's process tree with -np 8: after load, and after 8 concurrent
    streams and a history in one slot."""
    layout = MEMORY_LAYOUT
    threads = ["-t", str(setup.threads), *CHAT_TEMPLATE]
    tokens = 32 if setup.quick else 128
    with ExitStack() as stack:
        child_port, server_port = harness.free_port(), harness.free_port()
        child = stack.enter_context(harness.serve(harness.our_child(
            setup.model, child_port, *threads, *layout.args(per_slot=setup.child_ctx_per_slot)),
            child_port))  # fmt: skip
        server = stack.enter_context(harness.serve(harness.llama_server(
            setup.llama_server, setup.model, server_port, *threads, *layout.args()),
            server_port))  # fmt: skip
        results.note(
            f"Memory: both servers -c {layout.ctx_total} -np {layout.parallel}"
            f"{_per_slot_note(setup, layout)}; RSS summed over each process tree."
        )
        pids = {OURS: child.pid, THEIRS: server.pid}
        for name, pid in pids.items():
            results.add("engine_rss_loaded", name, "mib", harness.tree_rss_bytes(pid) / 2**20,
                        "MiB")  # fmt: skip
        bases = {OURS: child.base_url, THEIRS: server.base_url}
        words = 200 if setup.quick else 1440
        with httpx.Client(timeout=600) as client:
            for base in bases.values():
                trio.run(concurrent_tokens, base, setup.model.stem, 8, tokens)
                client.post(base + CHAT, json={"model": setup.model.stem, "max_tokens": 1,
                            "messages": chat_history(7, words)}).raise_for_status()  # fmt: skip
        for name, pid in pids.items():
            results.add("engine_rss_after_run", name, "mib", harness.tree_rss_bytes(pid) / 2**20,
                        "MiB")  # fmt: skip
    setup.progress("engine: memory")
