from __future__ import annotations

import os
from pathlib import Path

from router import cpu


def test_physical_cores_counts_distinct_sibling_sets(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for index, siblings in enumerate(["3", "3", "c", "c"]):  # 2 cores, 2 threads each
        topology = tmp_path / f"cpu{index}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings").write_text(siblings + "\n")
    monkeypatch.setattr(cpu, "_SYSFS_CPUS", tmp_path)
    assert cpu.physical_core_count() == 2


def test_physical_cores_falls_back_to_logical_count(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cpu, "_SYSFS_CPUS", tmp_path / "missing")
    assert cpu.physical_core_count() == os.cpu_count()
