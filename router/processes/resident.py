"""How much memory a child holds: the resident set (RSS) of its process and of every process
under it (a ``command`` child may be a wrapper whose model runs in a grandchild), read from
Linux's ``/proc`` when asked, never stored (``GET /models``).

Only ``/proc`` is read, which is memory, not disk: a few small files per process. A process
that ends while it is read counts as nothing; where ``/proc`` cannot be read (not Linux), the
answer is None, "unknown", not 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
_BYTES_PER_KB = 1024  # /proc writes kB for KiB


def resident_bytes(pid: int) -> int | None:
    """The resident memory of process ``pid`` alone in bytes, or None if it cannot be read
    (it has ended, or this is not Linux)."""
    try:
        with open(PROC / str(pid) / "status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * _BYTES_PER_KB
    except (OSError, ValueError, IndexError):
        return None
    return None  # a zombie or a kernel thread: it holds no memory of its own


def resident_tree_bytes(roots: Iterable[int]) -> dict[int, int | None]:
    """Each of ``roots`` with the resident memory of its process and all its descendants, in
    bytes (None: the root itself cannot be read). The process table is read once for all of
    them, so asking about every running model costs one pass over ``/proc``."""
    wanted = list(roots)
    if not wanted:
        return {}
    children = _children_by_parent()
    totals: dict[int, int | None] = {}
    for root in wanted:
        own = resident_bytes(root)
        if own is None:
            totals[root] = None
            continue
        total, seen, pending = own, {root}, list(children.get(root, ()))
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += resident_bytes(pid) or 0
            pending.extend(children.get(pid, ()))
        totals[root] = total
    return totals


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from each ``/proc/PID/stat``'s parent field (the kernel's
    ``/proc/PID/task/TID/children`` is not built into every kernel)."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return children
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            # "PID (command) STATE PPID ...": the command may hold spaces and parentheses.
            parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    return children
