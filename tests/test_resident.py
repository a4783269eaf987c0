"""A child's resident memory counts its descendants' (``router/processes/resident.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from router.processes.resident import resident_bytes, resident_tree_bytes

HELD = 64 * 2**20  # what the grandchild holds, written so that it is resident
# A parent that starts a grandchild holding HELD bytes, says its pid, and waits.
PARENT = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import sys, time; held = b'x' * {HELD}; print('held', flush=True); time.sleep(120)"],
    stdout=subprocess.PIPE)
assert child.stdout.readline() == b"held\\n"
print(child.pid, flush=True)
sys.stdin.read()
child.kill()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads Linux's /proc")
def test_a_processes_memory_includes_its_descendants() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own group: both go at the end, whatever happens
    )
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())  # bounded: the child is killed at 120 s
        own, theirs = resident_bytes(parent.pid), resident_bytes(grandchild)
        assert own is not None and theirs is not None and theirs >= HELD
        totals = resident_tree_bytes([parent.pid, 999_999_999])
        total = totals[parent.pid]
        assert total is not None and total >= own + HELD
        assert totals[999_999_999] is None  # no such process: unknown, not 0
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
