"""Child arguments a client may send with ``POST /models/load``, when the operator allows it.

Off by default (``--models-allow-extra-args`` turns it on), and even then only the flags below,
each with an ASCII decimal value inside its bounds: a client can size a model's context or
threads within what the machine and the model make sensible, never point a child at another
file, socket or command, nor ask for a million slots. The arguments last for the load that
asked for them (``pool.py``): a later autoload runs the operator's settings again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.errors import InvalidField
from router.options_table import MODEL_OPTIONS, OPTIONS_BY_KEY

_ASCII_INTEGER = re.compile(r"[0-9]{1,9}")  # \d would take any script's digits
FALLBACK_MAX_CTX = 8192  # when the GGUF's trained context cannot be read


@dataclass(frozen=True)
class ExtraArgLimits:
    """The upper bounds for one model's client-given arguments."""

    max_ctx: int
    max_threads: int

    @classmethod
    def for_model(cls, model_path: Path | None, options: Mapping[str, Any]) -> ExtraArgLimits:
        """The model's trained context, or more if the operator configured more; the CPUs."""
        configured = options.get("ctx_size")
        trained = trained_context(model_path) if model_path is not None else None
        max_ctx = max(trained or FALLBACK_MAX_CTX, configured if isinstance(configured, int) else 0)
        return cls(max_ctx=max_ctx, max_threads=os.cpu_count() or 1)

    def bounds(self, key: str) -> tuple[int, int]:
        """The option's client bounds (``options_table``), "ctx" and "cpus" made numbers."""
        client_bounds = OPTIONS_BY_KEY[key].client_bounds
        assert client_bounds is not None, key
        named = {"ctx": self.max_ctx, "cpus": self.max_threads}
        low, high = (named[b] if isinstance(b, str) else b for b in client_bounds)
        return low, high


# The options a client may set, each by every spelling of its flag (options_table).
ALLOWED_EXTRA_ARGS: dict[str, str] = {
    flag: option.key
    for option in MODEL_OPTIONS
    if option.is_client_settable
    for flag in option.flags
}
MAX_EXTRA_ARGS = 2 * len(set(ALLOWED_EXTRA_ARGS.values()))


def checked_extra_args(raw: object, limits: ExtraArgLimits) -> tuple[str, ...]:
    """``raw`` as a flat list of allowed ``flag value`` pairs, or InvalidField naming the fault."""
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise InvalidField("args", 'must be a list of strings, like ["-c", "8192"]')
    items: Sequence[str] = raw
    if len(items) % 2:
        raise InvalidField("args", "must hold flag and value pairs")
    if len(items) > MAX_EXTRA_ARGS:
        raise InvalidField("args", f"may hold at most {MAX_EXTRA_ARGS} strings")
    seen: set[str] = set()
    for flag, value in zip(items[::2], items[1::2], strict=True):
        key = ALLOWED_EXTRA_ARGS.get(flag)
        if key is None:
            allowed = ", ".join(sorted(f for f in ALLOWED_EXTRA_ARGS if f.startswith("--")))
            raise InvalidField("args", f"may not set {flag[:40]!r}; allowed: {allowed}")
        if key in seen:
            raise InvalidField("args", f"sets {flag} twice")
        seen.add(key)
        choices = OPTIONS_BY_KEY[key].choices
        if choices:
            if value not in choices:
                raise InvalidField("args", f"{flag} must be one of {', '.join(choices)}")
            continue
        low, high = limits.bounds(key)
        if not _ASCII_INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise InvalidField(
                "args", f"{flag} must be a whole number from {low} to {high}, not {value[:20]!r}"
            )
    return tuple(items)


def trained_context(model_path: Path) -> int | None:
    """The context length a GGUF was trained with (``ARCH.context_length``), if readable."""
    from router.models.gguf_header import scalar_metadata  # imports gguf (numpy): only when asked

    try:
        metadata = scalar_metadata(model_path)
    except (OSError, ValueError):  # the child will say what is wrong with the file
        return None
    context_length = metadata.get(f"{metadata.get('general.architecture')}.context_length")
    return context_length if type(context_length) is int and context_length > 0 else None
