"""Keep an external server from outliving the router: ``python -m router.processes.guard CMD...``.

The router speaks the lifeline protocol only with its own children; a ``command`` model
(llama-server, vLLM...) ignores its stdin, so if the router were killed outright it would run
on as an orphan. The router therefore starts such a command under this small guard, which
shares the command's process group and:

* runs the command, with stdout and stderr passed through and stdin closed;
* ignores SIGTERM itself (the router signals the whole group; the command ends, then the guard
  does, with the command's exit status);
* on end-of-file on its own stdin (the router died) sends SIGTERM to the group, then SIGKILL
  two seconds later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

KILL_AFTER_TERM_S = 2.0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m router.processes.guard COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        command = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"error: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 127
    # Ignored only now: an ignored signal would be inherited by the command through exec.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_stop_when_parent_dies, args=(command,), daemon=True).start()
    code = command.wait()
    return code if code >= 0 else 128 - code


def _stop_when_parent_dies(command: subprocess.Popen[bytes]) -> None:
    while os.read(0, 4096):
        pass
    # No message: with the router gone, writing to stderr (its pipe) would fail.
    os.killpg(0, signal.SIGTERM)
    try:
        command.wait(timeout=KILL_AFTER_TERM_S)
    except subprocess.TimeoutExpired:
        os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
