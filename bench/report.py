"""bench.json, a Markdown table, and PNG plots from the Results of one run."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Results, machine

SYSTEMS = ["direct", "llama-router", "llama-server", "llama.cpp-router"]
SYSTEM_LABELS = {
    "direct": "llama-router child",
    "llama.cpp-router": "llama.cpp router",
    "ngl0": "llama-cpp-python, no offload",
    "nglall": "llama-cpp-python, all layers",
}

# What a result's name and metric mean, in words (see label()).
NAMES = {
    "one_token_latency": "1-token completion, tiny GGUF",
    "added_latency": "added by the router",
    "keepalive_drops": "one keep-alive client, 1-token requests",
    "cold_start_tiny": "cold start, tiny GGUF",
    "cold_start_gemma": "cold start, Gemma 3 270M",
    "swap_tiny": "swap, tiny GGUF, --models-max 1",
    "load": "load, 3 models, --models-max 2",
    "pp512": "prompt processing, 512 tokens",
}
METRICS = {
    "p50_ms": "p50",
    "p90_ms": "p90",
    "p99_ms": "p99",
    "p50_added_ms": "p50 added",
    "p50_ratio": "p50 ratio",
    "ttft_ms": "time to first token",
    "tokens_per_s": "tokens/s",
    "tokens_per_s_ratio": "tokens/s ratio",
    "first_byte_s": "request to first byte, router idle 2 s",
    "first_byte_s_after_unload": "request to first byte, right after the unload",
    "seconds_per_swap": "per swap, back to back",
    "seconds_per_swap_spaced": "per swap, 1 s apart",
    "requests_per_s": "requests/s",
    "router_cpu_s": "router CPU",
    "router_cpu_us_per_event": "router process CPU a streamed event",
    "client_cpu_s": "bench client CPU",
    "cpu_busy_pct": "both CPUs busy",
    "wall_s": "wall time",
    "router_peak_rss_mib": "router peak RSS",
    "dropped": "requests dropped unanswered",
    "closed_connection": "errors: connection closed unanswered",
    "requests": "requests sent",
}


def label(name: str) -> str:
    """A result's name in words: "load_c32" is "load, 32 clients, 3 models, --models-max 2"."""
    if name in NAMES:
        return NAMES[name]
    if name.startswith("load_c"):
        clients = name.removeprefix("load_c")
        return f"load, {clients} client{'' if clients == '1' else 's'}, 3 models, --models-max 2"
    if name.startswith("stream_"):
        return f"greedy stream, {name.removeprefix('stream_')}"
    if name.startswith("tg"):
        return f"generation, {name.removeprefix('tg')} tokens"
    return name.replace("_", " ")


def machine_line() -> str:
    """The machine in a few words, for tables and plot titles."""
    info = machine()
    memory = int(info["memory_bytes"]) // 2**30  # type: ignore[call-overload]
    return f"{info['cpu']}, {info['logical_cpus']} CPUs, {memory} GiB"


@dataclass(frozen=True)
class EngineRow:
    """One row of issue 11's table: a result name, its label, and the target for the ratio
    (child / llama-server), where ``higher`` says which way is better."""

    name: str
    label: str
    target: float | None
    higher: bool


ENGINE_ROWS = [
    EngineRow("engine_one_token", "1-token completion, tiny GGUF, p50 (keep-alive)", 1.5, False),
    EngineRow("engine_health", "GET /health, p50 (keep-alive)", 1.5, False),
    EngineRow("engine_streams_1", "tokens/s, 1 greedy stream", 0.98, True),
    EngineRow("engine_streams_4", "aggregate tokens/s, 4 concurrent streams", 0.9, True),
    EngineRow("engine_streams_8", "aggregate tokens/s, 8 concurrent streams", 0.9, True),
    EngineRow("engine_streams_16", "aggregate tokens/s, 16 concurrent streams", 0.9, True),
    EngineRow(
        "engine_second_turn",
        "time to first token, 2nd chat turn after a {history}-token history",
        1.2,
        False,
    ),
    EngineRow("engine_first_turn", "1st turn: that history, nothing cached, 1 token", None, False),
    EngineRow("engine_rss_loaded", "resident memory, -np 8, after load", None, False),
    EngineRow(
        "engine_rss_after_run", "resident memory, -np 8, after 8 streams and a history", None, False
    ),
]


def markdown(results: Results, devices: list[str]) -> str:
    """The machine, the engine table (issue 11's rows) where measured, then one row per
    (measurement, metric) of the other sections, one column per system."""
    info = machine()
    lines = [
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs "
        f"({info['physical_cores']} physical), {int(info['memory_bytes']) // 2**30} GiB; "  # type: ignore[call-overload]
        f"devices: {', '.join(devices) or 'CPU'}",
        "",
    ]
    routers = router_table(results)
    if routers:
        lines += [*routers, ""]
    engine = engine_table(results)
    if engine:
        lines += [*engine, ""]
    rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    systems: list[str] = []
    for item in results.items:
        if item.name.startswith("engine_"):
            continue
        rows[(item.name, item.metric, item.unit)][item.system] = item.value
        if item.system not in systems:
            systems.append(item.system)
    if not rows:
        return "\n".join(lines)
    ordered = [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]
    lines += [
        "| measurement | metric | " + " | ".join(SYSTEM_LABELS.get(s, s) for s in ordered) + " |",
        "|---|---|" + "---|" * len(ordered),
    ]
    for (name, metric, unit), values in rows.items():
        cells = [f"{values[s]:.3f}" if s in values else "" for s in ordered]
        what = METRICS.get(metric, metric.replace("_", " "))
        lines.append(f"| {label(name)} | {what} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RouterRow:
    """One row of issue 12's table: llama-router beside llama.cpp's router, the ratio, and the
    target for it (``higher``: which way is better; no target: shown without a verdict)."""

    label: str
    name: str
    metric: str
    target: float | None = None
    higher: bool = False


ROUTER_ROWS = [
    RouterRow("added latency p50 (router vs straight to its child)", "added_latency",
              "p50_added_ms", 1.0),
    RouterRow("end to end, 1-token completion through each router, p50", "one_token_latency",
              "p50_ms", 1.0),
    RouterRow("cold start, tiny GGUF (request to first byte; router idle 2 s)",
              "cold_start_tiny", "first_byte_s", 2.0),
    RouterRow("cold start, tiny GGUF, right after an unload", "cold_start_tiny",
              "first_byte_s_after_unload", 2.0),
    RouterRow("cold start, Gemma 3 270M (router idle 2 s)", "cold_start_gemma",
              "first_byte_s", 1.1),
    RouterRow("swap, back to back, --models-max 1", "swap_tiny", "seconds_per_swap", 1.5),
    RouterRow("swap, 1 s apart, --models-max 1", "swap_tiny", "seconds_per_swap_spaced"),
    *(RouterRow(f"requests/s, {label(f'load_c{n}').removeprefix('load, ')}", f"load_c{n}",
                "requests_per_s", higher=True) for n in (1, 8, 32, 128)),
]  # fmt: skip


def router_table(results: Results) -> list[str]:
    """llama-router beside llama.cpp's router with the targets of issue 12, and the rows
    with no llama.cpp counterpart (streaming vs direct, dropped keep-alive requests, the load
    curve past saturation)."""
    measured = {(item.name, item.system, item.metric): item for item in results.items}
    lines = []
    for row in ROUTER_ROWS:
        ours = measured.get((row.name, "llama-router", row.metric))
        theirs = measured.get((row.name, "llama.cpp-router", row.metric))
        if ours is None or theirs is None:
            continue
        ratio = ours.value / theirs.value if theirs.value else float("nan")
        cells = [row.label, _value(ours.value, ours.unit, row.metric == "p50_added_ms"),
                 _value(theirs.value, theirs.unit, row.metric == "p50_added_ms"),
                 f"{ratio:.2f}x", _verdict(ratio, row.target, row.higher, "x")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for item in results.items:
        if (
            item.name.startswith("stream_")
            and item.metric == "tokens_per_s_ratio"
            and item.system == "llama-router"
        ):
            direct = measured.get((item.name, "direct", "tokens_per_s"))
            routed = measured.get((item.name, "llama-router", "tokens_per_s"))
            figures = f"{routed.value:.1f} vs {direct.value:.1f} tok/s" if routed and direct else ""
            theirs = measured.get((item.name, "llama.cpp-router", "tokens_per_s_ratio"))
            cells = [
                f"{label(item.name)}: through the router vs straight to its child",
                figures,
                f"{theirs.value:.3f}x (vs llama-server)" if theirs else "—",
                f"{item.value:.3f}x (vs direct)",
                _verdict(item.value, 0.99, True, "x"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
            ours_cpu = measured.get((item.name, "llama-router", "router_cpu_us_per_event"))
            theirs_cpu = measured.get((item.name, "llama.cpp-router", "router_cpu_us_per_event"))
            if ours_cpu is not None:
                cells = [
                    f"{label(item.name)}: the router process's CPU an event (taken from the "
                    "decode threads on 2 cores)",
                    f"{ours_cpu.value:.0f} µs",
                    f"{theirs_cpu.value:.0f} µs" if theirs_cpu else "—",
                    f"{ours_cpu.value / theirs_cpu.value:.2f}x"
                    if theirs_cpu and theirs_cpu.value
                    else "",
                    "",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    drops = {s: measured.get(("keepalive_drops", s, "dropped")) for s in SYSTEMS}
    sent = measured.get(("keepalive_drops", "llama-router", "requests"))
    if drops["llama-router"] is not None and sent is not None:
        ours_d, theirs_d = drops["llama-router"], drops["llama.cpp-router"]
        cells = [f"keep-alive requests dropped unanswered, of {sent.value:.0f} on one connection",
                 f"{ours_d.value:.0f}", f"{theirs_d.value:.0f}" if theirs_d else "—", "",
                 f"keep 0: {'met' if ours_d.value == 0 else 'MISSED'}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    levels = sorted({name for name, _, _ in measured if name.startswith("load_c")})
    closed = {system: [measured.get((name, system, "closed_connection")) for name in levels]
              for system in ("llama-router", "llama.cpp-router")}  # fmt: skip
    if levels and all(closed["llama-router"]):
        sent = sum(
            round(measured[(name, "llama-router", "requests_per_s")].value
                  * measured[(name, "llama-router", "wall_s")].value)
            + measured[(name, "llama-router", "errors")].value
            for name in levels
        )  # fmt: skip
        ours_c = sum(item.value for item in closed["llama-router"] if item)
        theirs = [item.value for item in closed["llama.cpp-router"] if item]
        cells = [f"requests failed on a closed connection under load, of {sent:.0f} (all levels)",
                 f"{ours_c:.0f}", f"{sum(theirs):.0f}" if theirs else "—", "",
                 f"keep 0: {'met' if ours_c == 0 else 'MISSED'}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    curve = sorted((int(item.name.removeprefix("load_c")), item.value) for item in results.items
                   if item.name.startswith("load_c") and item.system == "llama-router"
                   and item.metric == "requests_per_s")  # fmt: skip
    if len(curve) > 1:
        peak = max(value for _, value in curve)
        last_clients, last = curve[-1]
        cells = [
            f"requests/s at {last_clients} clients vs the peak ({peak:.0f}/s)",
            f"{last / peak:.2f}x",
            "",
            "",
            _verdict(last / peak, 0.9, True, "x of peak"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return []
    header = [
        "| router: figure | llama-router | llama.cpp router | llama-router / llama.cpp | target |",
        "|---|---|---|---|---|",
    ]
    return header + lines


def _verdict(ratio: float, target: float | None, higher: bool, unit: str) -> str:
    if target is None:
        return ""
    met = ratio >= target if higher else ratio <= target
    return f"{'≥' if higher else '≤'} {target}{unit}: {'met' if met else 'MISSED'}"


def engine_table(results: Results) -> list[str]:
    """Our child beside llama-server, the ratio, and whether the target is met."""
    measured = {(item.name, item.system): item for item in results.items}
    history = measured.get(("engine_history", "llama-server"))
    lines = []
    for row in ENGINE_ROWS:
        ours, theirs = measured.get((row.name, "direct")), measured.get((row.name, "llama-server"))
        if ours is None or theirs is None:
            continue
        ratio = ours.value / theirs.value if theirs.value else float("nan")
        verdict = ""
        if row.target is not None:
            met = ratio >= row.target if row.higher else ratio <= row.target
            verdict = f"{'≥' if row.higher else '≤'} {row.target}x: {'met' if met else 'MISSED'}"
        label = row.label.format(history=f"{history.value:.0f}" if history else "~1,500")
        cells = [label, _value(ours.value, ours.unit), _value(theirs.value, theirs.unit)]
        lines.append("| " + " | ".join([*cells, f"{ratio:.2f}x", verdict]) + " |")
    if not lines:
        return []
    header = [
        "| engine: figure | llama-router child | llama-server | child / llama-server | target |",
        "|---|---|---|---|---|",
    ]
    return header + lines + [""] + [f"- {note}" for note in results.notes]


def _value(value: float, unit: str, signed: bool = False) -> str:
    if unit == "ms":
        sign = "+" if signed and value >= 0 else ""
        return f"{sign}{value:.2f} ms" if value < 100 else f"{sign}{value:.0f} ms"
    if unit in ("tok/s", "MiB", "tokens"):
        return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def plots(results: Results, folder: Path, model: str = "Gemma 3 270M Q4_K_M") -> list[Path]:
    """Throughput against concurrency, every latency percentile by system, and tokens/s;
    each titled with what was measured, on which model and which machine. ``model`` is the
    model of the tokens/s figures (the latency and load figures use the tiny GGUF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = machine_line()
    cpus = int(machine()["logical_cpus"] or 1)  # type: ignore[call-overload]
    tiny = "tiny GGUF (tests/tiny_models.py)"
    written = []

    def save(figure: object, name: str) -> None:
        figure.tight_layout()  # type: ignore[attr-defined]
        written.append(folder / name)
        figure.savefig(written[-1], dpi=80)  # type: ignore[attr-defined]
        plt.close(figure)  # type: ignore[arg-type]

    curves: defaultdict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for item in results.items:
        if item.name.startswith("load_c"):
            curves[item.system][int(item.name.removeprefix("load_c"))][item.metric] = item.value
    if curves:
        figure, (axis, cpu_axis) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for system, levels in curves.items():
            clients = sorted(levels)
            name = SYSTEM_LABELS.get(system, system)
            axis.plot(clients, [levels[c]["requests_per_s"] for c in clients], marker="o",
                      label=name)  # fmt: skip
            cpu_axis.plot(clients, [levels[c].get("cpu_busy_pct", 0) for c in clients],
                          marker="o", label=f"{name}: both CPUs busy")  # fmt: skip
            cpu_axis.plot(clients, [100 * levels[c].get("router_cpu_s", 0) / cpus
                                    / max(levels[c].get("wall_s", 1), 1e-9) for c in clients],
                          marker="x", linestyle="--", label=f"{name}: router process")  # fmt: skip
        axis.set_xscale("log", base=2)
        ticks = sorted({c for levels in curves.values() for c in levels})
        cpu_axis.set_xticks(ticks, [str(c) for c in ticks])
        axis.set_ylabel("requests/s")
        axis.set_title(f"Requests/s vs concurrent clients, 3 models, --models-max 2\n"
                       f"{tiny}, 4 tokens each; {where}", fontsize=9)  # fmt: skip
        axis.legend(fontsize=8)
        cpu_axis.set_xlabel("concurrent clients")
        cpu_axis.set_ylabel(f"% of all {cpus} CPUs")
        cpu_axis.legend(fontsize=7)
        save(figure, "throughput.png")
    latency: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for item in results.items:
        if item.name == "one_token_latency":
            latency[item.system][item.metric] = item.value
    if latency:
        figure, axis = plt.subplots(figsize=(7, 4))
        metrics = ["p50_ms", "p90_ms", "p99_ms"]
        width = 0.8 / len(latency)
        for index, (system, values) in enumerate(latency.items()):
            axis.bar([m + index * width for m in range(3)], [values[m] for m in metrics],
                     width, label=SYSTEM_LABELS.get(system, system))  # fmt: skip
        axis.set_xticks([m + 0.4 - width / 2 for m in range(3)], [METRICS[m] for m in metrics])
        axis.set_ylabel("ms")
        axis.set_title(f"1-token completion latency, keep-alive client\n{tiny}; {where}",
                       fontsize=9)  # fmt: skip
        axis.legend(fontsize=8)
        save(figure, "latency.png")
    speeds = [(f"{SYSTEM_LABELS.get(item.system, item.system)}: {label(item.name)}", item.value)
              for item in results.items if item.metric == "tokens_per_s"
              and not item.name.startswith("engine_")]  # fmt: skip
    speeds += [(f"{SYSTEM_LABELS.get(item.system, item.system)}: "
                f"engine, {_streams(item.name.removeprefix('engine_streams_'))}", item.value)
               for item in results.items if item.name.startswith("engine_streams_")
               and item.metric == "tokens_per_s"]  # fmt: skip
    if speeds:
        figure, axis = plt.subplots(figsize=(8, 0.35 * len(speeds) + 1.6))
        axis.barh([name for name, _ in speeds], [value for _, value in speeds])
        axis.invert_yaxis()
        axis.set_xlabel("tokens/s")
        axis.set_title(f"Tokens per second, {model}\n{where}", fontsize=9)
        save(figure, "tokens_per_s.png")
    return written


def _streams(count: str) -> str:
    return "1 stream" if count == "1" else f"{count} concurrent streams"
