"""bench.json, a Markdown table, and PNG plots from the Results of one run."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Results, machine

SYSTEMS = ["direct", "llama-router", "llama-server", "llama.cpp-router"]
SYSTEM_LABELS = {"direct": "llama-router child", "ngl0": "no offload", "nglall": "all layers"}

# What a result's name and metric mean, in words; a name not listed is shown with spaces.
NAMES = {
    "one_token_latency": "1-token completion, tiny GGUF",
    "added_latency": "added by the router",
    "load": "load, 3 models, --models-max 2",
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
    "first_byte_s": "request to first byte",
    "seconds_per_swap": "per swap, back to back",
    "seconds_per_swap_spaced": "per swap, 1 s apart",
    "requests_per_s": "requests/s",
    "router_cpu_s": "router CPU",
    "router_peak_rss_mib": "router peak RSS",
}


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
        label = NAMES.get(name, name.replace("_", " "))
        what = METRICS.get(metric, metric.replace("_", " "))
        lines.append(f"| {label} | {what} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def _value(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    if unit in ("tok/s", "MiB", "tokens"):
        return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def plots(results: Results, folder: Path) -> list[Path]:
    """Throughput against concurrency, and every latency percentile by system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    load = sorted(
        (int(item.name.removeprefix("load_c")), item.value)
        for item in results.items
        if item.name.startswith("load_c") and item.metric == "requests_per_s"
    )
    if load:
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot([c for c, _ in load], [v for _, v in load], marker="o", label="llama-router")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("requests/s")
        axis.set_title("Throughput vs concurrency (3 models, --models-max 2)")
        axis.legend()
        figure.tight_layout()
        written.append(folder / "throughput.png")
        figure.savefig(written[-1])
        plt.close(figure)
    latency: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for item in results.items:
        if item.name == "one_token_latency":
            latency[item.system][item.metric] = item.value
    if latency:
        figure, axis = plt.subplots(figsize=(6, 4))
        metrics = ["p50_ms", "p90_ms", "p99_ms"]
        width = 0.8 / len(latency)
        for index, (system, values) in enumerate(latency.items()):
            axis.bar([m + index * width for m in range(3)], [values[m] for m in metrics],
                     width, label=system)  # fmt: skip
        axis.set_xticks([m + 0.4 - width / 2 for m in range(3)], metrics)
        axis.set_ylabel("ms")
        axis.set_title("1-token completion latency")
        axis.legend()
        figure.tight_layout()
        written.append(folder / "latency.png")
        figure.savefig(written[-1])
        plt.close(figure)
    speeds = [(item.system + " " + item.name, item.value) for item in results.items
              if item.metric in ("tokens_per_s", "aggregate_tokens_per_s")]  # fmt: skip
    if speeds:
        figure, axis = plt.subplots(figsize=(7, 0.35 * len(speeds) + 1.5))
        axis.barh([label for label, _ in speeds], [value for _, value in speeds])
        axis.set_xlabel("tokens/s")
        axis.set_title("Tokens per second")
        figure.tight_layout()
        written.append(folder / "tokens_per_s.png")
        figure.savefig(written[-1])
        plt.close(figure)
    return written
