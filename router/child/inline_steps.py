"""Which first steps the decode loop may run on the Trio thread: those known to be short.

A step handed to the decode thread crosses threads four times (waking the thread, its
taking the GIL, waking Trio's loop, its taking the GIL back): on a small model that is as
long as the step itself. So ``DecodeLoop.submit`` runs a lone request's first step itself
when the loop is idle and the step is known to take ``INLINE_STEP_S`` at most; meanwhile
Trio's loop serves nothing else, but a generation arriving then would wait for that step
anyway.

Known, not guessed from a pace: a step's cost is mostly fixed on a small batch, so a time
per token read off a large batch would let a small prompt block the loop for a whole step
of a large model; and tokens after a long cached prefix attend to all of it (21 new tokens
after 1,900 cached took 12.9 ms where 24 fresh ones took 0.5). ``InlineBound`` admits a
step only if a step of one sequence, with at least as many tokens and reaching at least as
far into its sequence, was measured to fit; a step that overran rules out every measured
step it does not exceed.

Such a step runs on one core: llama.cpp's OpenMP gives each thread that computes with more
than one a team of workers of its own, and once a process has more workers than CPUs,
libgomp sleeps at every barrier instead of spinning (a step on the Trio thread with the
context's two threads made a 100-token generation ten times slower; ``thread_calls.py``
keeps the rest of llama.cpp's computing on the decode thread). A step measured on the decode
thread's ``n`` threads counts ``n`` times its time, what it could take on one.
"""

from __future__ import annotations

# The longest first step run on the Trio thread (on one core).
INLINE_STEP_S = 0.002
# The most measured steps kept (the latest): a handful of sizes covers a model's requests.
MOST_FITS = 16


class InlineBound:
    """The first steps known to run within ``limit_s`` on one core: those no larger, in new
    tokens and in the position they reach, than a step of one sequence measured to."""

    def __init__(self, limit_s: float = INLINE_STEP_S) -> None:
        self.limit_s = limit_s
        # (new tokens, end position) of the steps measured to fit, none within another:
        # nothing measured yet, nothing runs on the Trio thread.
        self._fits: list[tuple[int, int]] = []

    def allows(self, n_tokens: int, end: int) -> bool:
        """Whether a step of ``n_tokens`` new tokens, the last at position ``end - 1``, is
        known to fit."""
        return any(n_tokens <= tokens and end <= reach for tokens, reach in self._fits)

    def record(self, n_tokens: int, end: int, seconds: float, n_threads: int) -> None:
        """A step of one sequence: ``n_tokens`` new tokens up to position ``end - 1`` took
        ``seconds`` on ``n_threads`` threads (on one, it could take ``n_threads`` times as
        long)."""
        if seconds * n_threads <= self.limit_s:
            if not self.allows(n_tokens, end):
                others = [
                    (tokens, reach)
                    for tokens, reach in self._fits
                    if not (tokens <= n_tokens and reach <= end)
                ]
                self._fits = [*others[-(MOST_FITS - 1) :], (n_tokens, end)]
        else:  # the machine is slower than those steps said: forget what this one exceeds
            self._fits = [
                (tokens, reach)
                for tokens, reach in self._fits
                if not (tokens >= n_tokens and reach >= end)
            ]
