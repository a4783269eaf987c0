"""Child arguments a client may send with ``POST /models/load``, when the operator allows it.

Off by default (``--models-allow-extra-args`` turns it on), and even then only the flags below,
each with a value of the right shape: a client can size a model's context or threads, never
point a child at another file, socket or command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from router.errors import InvalidField

_INTEGER = re.compile(r"-?\d{1,9}")
_FLASH_ATTN = re.compile(r"on|off|auto")

# Each allowed flag, by every spelling, with the pattern its value must match.
ALLOWED_EXTRA_ARGS: dict[str, re.Pattern[str]] = {
    flag: pattern
    for flags, pattern in (
        (("-c", "--ctx-size"), _INTEGER),
        (("-ngl", "--n-gpu-layers", "--gpu-layers"), _INTEGER),
        (("-t", "--threads"), _INTEGER),
        (("-tb", "--threads-batch"), _INTEGER),
        (("-b", "--batch-size"), _INTEGER),
        (("-ub", "--ubatch-size"), _INTEGER),
        (("-np", "--parallel"), _INTEGER),
        (("-fa", "--flash-attn"), _FLASH_ATTN),
    )
    for flag in flags
}


def checked_extra_args(raw: object) -> tuple[str, ...]:
    """``raw`` as a flat list of allowed ``flag value`` pairs, or InvalidField naming the fault."""
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise InvalidField("args", 'must be a list of strings, like ["-c", "8192"]')
    items: Sequence[str] = raw
    if len(items) % 2:
        raise InvalidField("args", "must hold flag and value pairs")
    for flag, value in zip(items[::2], items[1::2], strict=True):
        pattern = ALLOWED_EXTRA_ARGS.get(flag)
        if pattern is None:
            allowed = ", ".join(sorted(f for f in ALLOWED_EXTRA_ARGS if f.startswith("--")))
            raise InvalidField("args", f"may not set {flag!r}; allowed: {allowed}")
        if not pattern.fullmatch(value):
            raise InvalidField("args", f"has {value!r} for {flag}, which it does not accept")
    return tuple(items)
