"""Which first steps the decode loop may run on the Trio thread: those known to be short.

A step handed to the decode thread crosses threads four times (waking the thread, its
taking the GIL, waking Trio's loop, its taking the GIL back): on a small model that is as
long as the step itself. So ``DecodeLoop.submit`` runs a lone request's first step itself
when the loop is idle and the step is known to take ``INLINE_STEP_S`` at most; meanwhile
Trio's loop serves nothing else, but a generation arriving then would wait for that step
anyway.

Known, not guessed from a pace: a step's cost is mostly fixed on a small batch, so a time
per token read off a large batch would let a small prompt block the loop for a whole step
of a large model. ``InlineBound`` only admits a prompt no longer than a step that was
measured to fit, and forgets any length a step of as many tokens or fewer overran.

Such a step runs on one thread: llama.cpp's OpenMP gives each calling thread a team of
workers of its own, and a second team spinning beside the decode thread's made a
100-token generation ten times slower. A step measured on the decode thread's ``n``
threads counts ``n`` times its time, what it could take on one.
"""

from __future__ import annotations

# The longest first step run on the Trio thread (on one core).
INLINE_STEP_S = 0.002


class InlineBound:
    """The most prompt tokens a first step may have to run on the Trio thread."""

    def __init__(self, limit_s: float = INLINE_STEP_S) -> None:
        self.limit_s = limit_s
        self.most_tokens = 0  # nothing measured yet: nothing runs there

    def allows(self, n_tokens: int) -> bool:
        return n_tokens <= self.most_tokens

    def record(self, n_tokens: int, seconds: float, n_threads: int) -> None:
        """A step of ``n_tokens`` (its batch, all sequences) took ``seconds`` on
        ``n_threads`` threads."""
        if seconds * n_threads <= self.limit_s:
            self.most_tokens = max(self.most_tokens, n_tokens)
        else:
            self.most_tokens = min(self.most_tokens, n_tokens - 1)
