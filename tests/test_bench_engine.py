"""The engine section of the bench (issue 11's table): its report, and a --quick run against
llama-server where one has been built (scripts/build_llama_cpp.sh). Nothing here asserts a
timing: only what was measured and how the table reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import CpuSnapshot, Results, tree_rss_bytes
from bench.report import engine_table, markdown

ROWS = [
    "engine_one_token",
    "engine_health",
    "engine_streams_1",
    "engine_streams_4",
    "engine_second_turn",
    "engine_first_turn",
    "engine_history",
    "engine_rss_loaded",
    "engine_rss_after_run",
]


def test_engine_table_gives_ratio_and_verdict_per_target() -> None:
    results = Results()
    results.add("engine_one_token", "direct", "p50_ms", 3.0, "ms")
    results.add("engine_one_token", "llama-server", "p50_ms", 1.0, "ms")
    results.add("engine_streams_8", "direct", "tokens_per_s", 95.0, "tok/s")
    results.add("engine_streams_8", "llama-server", "tokens_per_s", 100.0, "tok/s")
    results.add("engine_history", "llama-server", "prompt_tokens", 1500, "tokens")
    results.add("engine_second_turn", "direct", "ttft_ms", 110.0, "ms")
    results.add("engine_second_turn", "llama-server", "ttft_ms", 100.0, "ms")
    results.note("how it was run")

    lines = engine_table(results)

    table = "\n".join(lines)
    assert "| 3.00 ms | 1.00 ms | 3.00x | ≤ 1.5x: MISSED |" in table
    assert "| 95 tok/s | 100 tok/s | 0.95x | ≥ 0.9x: met |" in table
    assert "after a 1500-token history | 110 ms | 100 ms | 1.10x | ≤ 1.2x: met |" in table
    assert "- how it was run" in table
    assert "| measurement |" not in markdown(results, []), "engine rows stay out of the table"


def test_cpu_accounting_sees_this_process() -> None:
    start = CpuSnapshot.take()
    sum(i * i for i in range(200_000))
    assert start.foreign_share() >= 0.0
    assert CpuSnapshot.take().ours_s >= start.ours_s
    assert tree_rss_bytes(os.getpid()) > 0


def _built_llama_server() -> Path | None:
    found = sorted(Path.home().glob(".cache/llama-router/llama-cpp-*/llama-server"))
    return found[0] if found else None


@pytest.mark.skipif(_built_llama_server() is None, reason="no llama-server built")
def test_quick_engine_bench_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "engine", "--out", str(out),
         "--llama-server", str(_built_llama_server())],
        check=True, timeout=600, cwd=Path(__file__).parent.parent, capture_output=True,
    )  # fmt: skip
    report = json.loads((out / "bench.json").read_text())
    measured = {(r["name"], r["system"]) for r in report["results"]}
    for row in ROWS:
        assert (row, "direct") in measured and (row, "llama-server") in measured, row
    assert "| engine: figure |" in (out / "bench.md").read_text()
