"""bench.json, a Markdown table, and PNG plots from the Results of one run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bench.harness import Results, machine

SYSTEMS = ["direct", "llama-router", "llama-server", "llama.cpp-router"]


def markdown(results: Results, devices: list[str]) -> str:
    """One row per (measurement, metric), one column per system."""
    rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    systems: list[str] = []
    for item in results.items:
        rows[(item.name, item.metric, item.unit)][item.system] = item.value
        if item.system not in systems:
            systems.append(item.system)
    ordered = [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]
    info = machine()
    lines = [
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs "
        f"({info['physical_cores']} physical), {int(info['memory_bytes']) // 2**30} GiB; "  # type: ignore[call-overload]
        f"devices: {', '.join(devices) or 'CPU'}",
        "",
        "| measurement | metric | " + " | ".join(ordered) + " |",
        "|---|---|" + "---|" * len(ordered),
    ]
    for (name, metric, unit), values in rows.items():
        cells = [f"{values[s]:.3f}" if s in values else "" for s in ordered]
        lines.append(f"| {name} | {metric} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    latency = defaultdict(dict)
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
