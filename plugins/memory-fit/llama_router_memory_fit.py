"""Load models by the memory they need, as Ollama's scheduler does, not by their count.

Turned on by ``LLAMA_ROUTER_MEMORY_FIT=1`` (run the router with ``--models-max 0`` so that
memory alone decides). Each model's need is estimated from its GGUF: the weights (the file
size) plus 5% for compute buffers, plus the KV cache for its context (layers x context x KV
heads x head sizes x 2 bytes, f16; a ``ctx_size`` of 0 is the context the model was trained
with). A model fits when its need is below the free memory (``MemAvailable``), or, with
``LLAMA_ROUTER_MEMORY_BUDGET=BYTES`` (``8G`` works), when the needs of everything loaded and
it stay within that budget. Otherwise the router unloads idle models (least recently used
first) until it fits; a model that fits nowhere is still loaded when nothing else is. GPU
memory is not counted yet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from router import ModelInfo, hookimpl
from router.models.gguf_header import (
    scalar_metadata,  # internal; the router's one GGUF header reader
)

DEFAULT_CTX = 4096


def memory_need(model: ModelInfo) -> int:
    """Bytes ``model`` is expected to take once loaded (0 if it has no GGUF to read).

    A header that cannot be read counts as weights only: the child will say what is wrong.
    """
    if model.path is None or not model.path.is_file():
        return 0
    try:
        metadata = scalar_metadata(model.path)
    except (OSError, ValueError):
        metadata = {}
    arch = metadata.get("general.architecture", "llama")

    def number(key: str, default: int) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        return value if type(value) is int and value > 0 else default

    layers = number("block_count", 0)
    embd = number("embedding_length", 0)
    heads = number("attention.head_count", 1)
    kv_heads = number("attention.head_count_kv", heads)
    key_len = number("attention.key_length", embd // heads)
    value_len = number("attention.value_length", embd // heads)
    # ctx_size 0 asks for the context the model was trained with, as in llama.cpp.
    n_ctx = int(model.args.get("ctx_size", DEFAULT_CTX) or number("context_length", DEFAULT_CTX))
    kv_cache = n_ctx * layers * kv_heads * (key_len + value_len) * 2
    return int(model.path.stat().st_size * 1.05) + kv_cache


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _budget() -> int | None:
    raw = os.environ.get("LLAMA_ROUTER_MEMORY_BUDGET")
    if not raw:
        return None
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if raw[-1].upper() in units:
        return int(float(raw[:-1]) * units[raw[-1].upper()])
    return int(raw)


@hookimpl
def model_fits(incoming: ModelInfo, loaded: Sequence[ModelInfo]) -> bool | None:
    if os.environ.get("LLAMA_ROUTER_MEMORY_FIT") not in ("1", "true", "yes"):
        return None
    if not loaded:
        return True  # alone, it gets its chance whatever the estimate says
    need = memory_need(incoming)
    budget = _budget()
    if budget is not None:
        return need + sum(memory_need(model) for model in loaded) <= budget
    return need <= available_memory()
