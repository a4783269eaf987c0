"""Slots: the sequences of the one shared llama context, and which one a new prompt gets.

A slot is one sequence id in the context's KV cache (``--parallel N`` gives N), with the
tokens that sequence holds. Those tokens outlive the generation that put them there: the
next prompt that starts the same way (the next turn of a chat) evaluates only what is new.
A new request goes to the free slot holding the longest common prefix with its prompt, when
that prefix is a large enough part of the prompt (``--slot-prompt-similarity``), else to the
slot used longest ago: llama-server's choice.

Slots are read and written by the decode loop's thread only; the Trio side reads their
counters for ``/slots`` (plain attribute reads, which may be one step old).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

_clock = itertools.count(1)


@dataclass(eq=False)
class Slot:
    id: int  # the sequence id in the shared context
    n_ctx: int  # the most tokens its sequence may hold
    cached: list[int] = field(default_factory=list)  # the tokens its KV cache holds, in order
    is_processing: bool = False
    last_used: int = 0  # a tick of a process-wide counter: larger is more recent
    # The running (or last) generation's counts, for /slots:
    n_prompt_tokens: int = 0
    n_prompt_tokens_cache: int = 0
    n_prompt_tokens_processed: int = 0
    n_decoded: int = 0

    def start(self, n_prompt_tokens: int, n_reused: int) -> None:
        self.is_processing = True
        self.n_prompt_tokens = n_prompt_tokens
        self.n_prompt_tokens_cache = n_reused
        self.n_prompt_tokens_processed = n_reused
        self.n_decoded = 0

    def release(self) -> None:
        self.is_processing = False
        self.last_used = next(_clock)


def pick_slot(free: Sequence[Slot], prompt: Sequence[int], similarity: float) -> Slot:
    """The free slot for ``prompt``: longest cached prefix if it is more than ``similarity``
    of the prompt (0 < similarity), else the least recently used slot."""
    if similarity > 0 and prompt:
        best = max(free, key=lambda slot: common_prefix_length(slot.cached, prompt))
        if common_prefix_length(best.cached, prompt) / len(prompt) > similarity:
            return best
    return min(free, key=lambda slot: slot.last_used)


def common_prefix_length(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading tokens ``cached`` and ``prompt`` share."""
    n = 0
    for a, b in zip(cached, prompt, strict=False):
        if a != b:
            break
        n += 1
    return n
