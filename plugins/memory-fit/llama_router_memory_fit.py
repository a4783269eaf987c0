"""Load models by the memory they need, as Ollama's scheduler does, not by their count.

Turned on by ``LLAMA_ROUTER_MEMORY_FIT=1`` (run the router with ``--models-max 0`` so that
memory alone decides). Each model's need is estimated from its GGUF: the weights (the file
size) plus the KV cache for its context (layers x context x KV heads x head sizes x 2 bytes,
f16) plus 5% for compute buffers. A model fits when its need is below the free memory
(``MemAvailable``), or, with ``LLAMA_ROUTER_MEMORY_BUDGET=BYTES`` (``8G`` works), when the
needs of everything loaded and it stay within that budget. Otherwise the router unloads idle
models (least recently used first) until it fits; a model that fits nowhere is still loaded
when nothing else is. GPU memory is not counted yet.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from router import ModelInfo, hookimpl

DEFAULT_CTX = 4096
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path) -> dict[str, Any]:
    """A GGUF's scalar metadata (arrays are skipped), without reading the tensors."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        magic, _version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        offset = 24
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, offset = _string(data, offset)
            (kind,) = struct.unpack_from("<I", data, offset)
            value, offset = _value(data, offset + 4, kind)
            if value is not None:
                metadata[key] = value
        return metadata


def _string(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start : start + length].decode("utf-8", errors="replace"), start + length


def _value(data: mmap.mmap, offset: int, kind: int) -> tuple[Any, int]:
    if kind in _SCALAR:
        fmt = _SCALAR[kind]
        return struct.unpack_from(fmt, data, offset)[0], offset + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(data, offset)
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", data, offset)
        offset += 12
        if item_kind in _SCALAR:
            return None, offset + count * struct.calcsize(_SCALAR[item_kind])
        for _ in range(count):  # strings (or nested arrays): walk them
            _, offset = _value(data, offset, item_kind)
        return None, offset
    raise ValueError(f"unknown GGUF value type {kind}")


@lru_cache(maxsize=256)
def _need_for(path: str, mtime_ns: int, n_ctx: int) -> int:
    del mtime_ns  # part of the cache key only
    metadata = read_metadata(Path(path))
    arch = metadata.get("general.architecture", "llama")
    layers = int(metadata.get(f"{arch}.block_count", 0))
    embd = int(metadata.get(f"{arch}.embedding_length", 0))
    heads = int(metadata.get(f"{arch}.attention.head_count", 1)) or 1
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads)) or heads
    key_len = int(metadata.get(f"{arch}.attention.key_length", embd // heads))
    value_len = int(metadata.get(f"{arch}.attention.value_length", embd // heads))
    weights = Path(path).stat().st_size
    kv_cache = n_ctx * layers * kv_heads * (key_len + value_len) * 2
    return int(weights * 1.05) + kv_cache


def memory_need(model: ModelInfo) -> int:
    """Bytes ``model`` is expected to take once loaded (0 if it has no GGUF to read)."""
    if model.path is None or not model.path.is_file():
        return 0
    n_ctx = int(model.args.get("ctx_size", DEFAULT_CTX)) or DEFAULT_CTX
    return _need_for(str(model.path), model.path.stat().st_mtime_ns, n_ctx)


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
