"""The bench's smoke run (--quick): every section it can run without llama.cpp completes and
writes its report. It asserts what ran and that nothing failed, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.harness import Results
from bench.report import router_table


def test_quick_bench_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "latency,cold,load,backends",
         "--out", str(out)],
        check=True, timeout=600, cwd=Path(__file__).parent.parent,
        capture_output=True,
    )  # fmt: skip
    report = json.loads((out / "bench.json").read_text())
    assert report["machine"]["logical_cpus"] >= 1
    names = {(r["name"], r["system"], r["metric"]) for r in report["results"]}
    assert ("added_latency", "llama-router", "p50_added_ms") in names
    assert ("cold_start_tiny", "llama-router", "first_byte_s") in names
    assert ("swap_tiny", "llama-router", "seconds_per_swap") in names
    assert ("pp512", "ngl0", "tokens_per_s") in names
    assert ("keepalive_drops", "llama-router", "dropped") in names
    assert ("load_c8", "llama-router", "closed_connection") in names
    errors = [r["value"] for r in report["results"] if r["metric"] == "errors"]
    assert errors and all(value == 0 for value in errors)
    table = (out / "bench.md").read_text()
    assert "| measurement |" in table
    assert "load_c" not in table and "_" not in table.split("| measurement |")[1].split("|")[1]
    assert (out / "latency.png").stat().st_size > 0


def test_router_table_gives_ratio_and_verdict_per_target() -> None:
    results = Results()
    results.add("added_latency", "llama-router", "p50_added_ms", 0.5, "ms")
    results.add("added_latency", "llama.cpp-router", "p50_added_ms", 0.4, "ms")
    results.add("swap_tiny", "llama-router", "seconds_per_swap", 0.03, "s")
    results.add("swap_tiny", "llama.cpp-router", "seconds_per_swap", 0.06, "s")
    results.add("stream_gemma", "direct", "tokens_per_s", 100.0, "tok/s")
    results.add("stream_gemma", "llama-router", "tokens_per_s", 99.5, "tok/s")
    results.add("stream_gemma", "llama-router", "tokens_per_s_ratio", 0.995, "x")
    results.add("stream_gemma", "llama.cpp-router", "tokens_per_s_ratio", 0.981, "x")
    for clients, rate in ((1, 50.0), (128, 40.0)):
        for system in ("llama-router", "llama.cpp-router"):
            for metric, value in (
                ("requests_per_s", rate),
                ("wall_s", 10.0),
                ("errors", 0),
                ("closed_connection", 0 if system == "llama-router" else 3),
            ):
                results.add(f"load_c{clients}", system, metric, value, "")  # fmt: skip
    rows = {line.split(" | ")[0].lstrip("| "): line for line in router_table(results)[2:]}
    assert rows["added latency p50 (router vs straight to its child)"].endswith(
        "| +0.50 ms | +0.40 ms | 1.25x | ≤ 1.0x: MISSED |"
    )
    assert rows["swap, back to back, --models-max 1"].endswith("| 0.50x | ≤ 1.5x: met |")
    stream = rows["greedy stream, gemma: through the router vs straight to its child"]
    assert "| 0.981x (vs llama-server) | 0.995x (vs direct) | ≥ 0.99x: met |" in stream
    closed = next(line for key, line in rows.items() if key.startswith("requests failed"))
    assert "of 900 " in closed and "| 0 | 6 |" in closed and "keep 0: met" in closed
    peak = next(line for key, line in rows.items() if key.startswith("requests/s at 128"))
    assert "≥ 0.9x of peak: MISSED" in peak  # 40/s at 128 clients after 50/s at 1


def test_the_probes_run_and_print_a_line_a_round() -> None:
    """``bench.probes`` (router_profile.md's numbers): the router and the least relay in front
    of a real child each print their round, the child probe a line for each child it compares
    (here this checkout with itself); what they say is not asserted."""
    for probe in ("added", "floor"):
        done = subprocess.run(
            [sys.executable, "-m", "bench.probes", probe, "--rounds", "2", "--requests", "20"],
            check=True, timeout=300, cwd=Path(__file__).parent.parent,
            capture_output=True, text=True,
        )  # fmt: skip
        lines = done.stdout.splitlines()
        assert len(lines) == 2 and all("added" in line and "CPU" in line for line in lines)
    done = subprocess.run(
        [sys.executable, "-m", "bench.probes", "child", "--rounds", "1", "--requests", "10",
         "--base", "."],
        check=True, timeout=300, cwd=Path(__file__).parent.parent, capture_output=True, text=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["child", "base"]
    assert all("p50" in line and "CPU" in line for line in lines)
