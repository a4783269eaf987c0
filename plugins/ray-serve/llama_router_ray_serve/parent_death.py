"""``python -m llama_router_ray_serve.parent_death COMMAND...``: run COMMAND (by exec, so it
keeps this pid) such that the kernel sends it SIGTERM when its parent process dies.

Why, beside ``router.processes.guard``: when Ray ends a replica's worker it also SIGKILLs the
worker's direct children (Ray's ``kill_child_processes_on_worker_exit``), the guard among
them, before the guard can end the router it started; the router would then run on as an
orphan. Started by the guard through this module, the router gets SIGTERM from the kernel the
moment the guard dies, however it dies (``PR_SET_PDEATHSIG``; Linux only: elsewhere the guard's
own end-of-file watch is all there is). The guard starts its command from its main thread,
which lives as long as the guard does, so the signal means the guard's death and nothing else.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m llama_router_ray_serve.parent_death COMMAND...", file=sys.stderr)
        return 2
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            print(f"prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 1
        # The guard leads its own process group: if it died before prctl, our parent is
        # someone else now, and no signal would ever come.
        if os.getppid() != os.getpgid(0):
            return 1
    os.execvp(argv[0], argv)  # noqa: S606 - no shell, on purpose: COMMAND as given


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
