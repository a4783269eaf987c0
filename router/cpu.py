"""How many threads inference should use by default, chosen as llama-server chooses.

llama-cpp-python defaults to half the logical CPUs, which on a 2-core machine means one
thread and roughly half the generation speed of llama-server. llama-server uses the number
of physical cores, counted as the distinct ``thread_siblings`` sets in sysfs; we do the same.
"""

from __future__ import annotations

import os
from pathlib import Path

_SYSFS_CPUS = Path("/sys/devices/system/cpu")


def physical_core_count() -> int:
    """The number of physical cores, as llama.cpp's ``common_cpu_get_num_physical_cores``.

    Falls back to the logical CPU count where sysfs says nothing (macOS, containers that hide
    it). Never less than 1.
    """
    sibling_sets: set[str] = set()
    cpu = 0
    while True:
        siblings = _SYSFS_CPUS / f"cpu{cpu}" / "topology" / "thread_siblings"
        try:
            sibling_sets.add(siblings.read_text().strip())
        except OSError:
            break
        cpu += 1
    if sibling_sets:
        return len(sibling_sets)
    return max(1, os.cpu_count() or 1)
