"""A GGUF file's scalar metadata (architecture, layer and head counts, context length...).

The ``gguf`` package's ``GGUFReader`` reads the same header, but it builds a numpy view of
every element of every array first, and a vocabulary is three arrays of 100,000s of elements.
Measured on the 2-core dev machine (best of 3, other work running) on Gemma 3 270M Q4_K_M
(262,144 tokens, 253 MB): ``GGUFReader(path)`` 11.4 s, :func:`scalar_metadata` 23 ms; on a
tiny generated model (260 tokens) 9.2 ms and 0.1 ms. So this walk stays hand-written; the
value types and the magic come from ``gguf``, and ``tests/test_gguf_header.py`` checks it
against ``GGUFReader``. Used by ``extra_args.py``, the memory-fit plugin and Ollama's
``/api/tags``.
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from gguf.constants import GGUF_MAGIC, GGUFValueType

_T = TypeVar("_T")

Scalar = int | float | bool | str

_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


def scalar_metadata(path: Path) -> Mapping[str, Scalar]:
    """The key/values of the GGUF at ``path`` that are not arrays; its tensors are not read.

    Read once per version of the file (its path, mtime and size). Raises OSError if the file
    cannot be read, ValueError if it is not a whole GGUF header.
    """
    stat = path.stat()
    return _cached_metadata(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_metadata(path: Path, _mtime_ns: int, _size: int) -> Mapping[str, Scalar]:
    return MappingProxyType(_read_mapped(path, lambda data: _walk_header(data)[0]))


def _read_mapped(path: Path, read: Callable[[mmap.mmap], _T]) -> _T:
    """``read`` over the file mapped in memory; any way a header can be broken is a ValueError
    that names the file."""
    with path.open("rb") as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file
            raise ValueError(f"{path} has no readable GGUF header (it is empty)") from exc
        with data:
            try:
                return read(data)
            except (ValueError, struct.error, RecursionError) as exc:
                raise ValueError(f"{path} has no readable GGUF header ({exc})") from exc


def _walk_header(data: mmap.mmap) -> tuple[dict[str, Scalar], _Reader, int]:
    """The metadata, a reader at the tensor infos that follow it, and how many there are."""
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic != GGUF_MAGIC:
        raise ValueError("not a GGUF file")
    # A GGUF written on a big-endian machine reads as a version with its low 16 bits zero.
    (version,) = struct.unpack_from("<I", data, 4)
    order = ">" if version & 0xFFFF == 0 else "<"
    n_tensors, n_kv = struct.unpack_from(order + "QQ", data, 8)
    reader = _Reader(data, order, offset=24)
    metadata: dict[str, Scalar] = {}
    for _ in range(n_kv):
        key = reader.string()
        value = reader.value(reader.integer("I"))
        if value is not None:
            metadata[key] = value
    return metadata, reader, n_tensors


def parameter_count(path: Path) -> int:
    """How many weights the GGUF's tensors hold, from the shapes its header lists (no tensor
    data is read): Ollama's ``parameter_size``. Raises as :func:`scalar_metadata` does."""
    stat = path.stat()
    return _cached_parameter_count(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_parameter_count(path: Path, _mtime_ns: int, _size: int) -> int:
    return _read_mapped(path, _tensor_weights)


def _tensor_weights(data: mmap.mmap) -> int:
    _, reader, n_tensors = _walk_header(data)
    total = 0
    for _ in range(n_tensors):
        reader.string()  # its name
        total += math.prod(reader.integer("Q") for _ in range(reader.integer("I")))
        reader.offset += 4 + 8  # its type and its data's offset
    return total


class _Reader:
    """A cursor over the header; every read moves it past what was read."""

    def __init__(self, data: mmap.mmap, order: str, offset: int) -> None:
        self.data, self.order, self.offset = data, order, offset

    def scalar(self, fmt: str) -> Scalar:
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def integer(self, fmt: str) -> int:
        return int(self.scalar(fmt))

    def string(self) -> str:
        length = self.integer("Q")
        if self.offset + length > len(self.data):
            raise struct.error("a string runs past the end of the file")
        text = self.data[self.offset : self.offset + length].decode(errors="replace")
        self.offset += length
        return text

    def skip_strings(self, count: int) -> None:
        length_at = struct.Struct(self.order + "Q").unpack_from
        data, offset = self.data, self.offset
        for _ in range(count):
            offset += 8 + length_at(data, offset)[0]
        if offset > len(data):
            raise struct.error("a string runs past the end of the file")
        self.offset = offset

    def value(self, kind: int) -> Scalar | None:
        """The value of type ``kind`` here; None, once skipped, for an array."""
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            item_kind, count = self.integer("I"), self.integer("Q")
            if item_kind in _FORMATS:
                self.offset += count * struct.calcsize(_FORMATS[item_kind])
            elif item_kind == GGUFValueType.STRING:  # a vocabulary: the loop that counts
                self.skip_strings(count)
            else:  # arrays of arrays: each one's length is in the file
                for _ in range(count):
                    self.value(item_kind)
            return None
        if kind not in _FORMATS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.scalar(_FORMATS[kind])
