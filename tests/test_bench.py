"""The bench's smoke run (--quick): every section it can run without llama.cpp completes and
writes its report. It asserts what ran and that nothing failed, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
    errors = [r["value"] for r in report["results"] if r["metric"] == "errors"]
    assert errors and all(value == 0 for value in errors)
    assert "| measurement |" in (out / "bench.md").read_text()
    assert (out / "latency.png").stat().st_size > 0
