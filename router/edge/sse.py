"""Server-Sent Events read as their bytes arrive, in pieces of any size: the one parser of the
router's edge, for what it reads of a child's stream (the usage it states, ``usage.py``; the
pieces of text Ollama's clients are given, ``ollama_api.py``).

Events end at a blank line; lines end with ``\\n`` or ``\\r\\n``; an event's data is its
``data:`` lines (one leading space dropped), joined by ``\\n``; other fields and comments are
skipped. Memory stays bounded whatever a child sends: a line or an event's data longer than
``max_event_bytes`` is skipped to its end, not kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

EVENT_BYTES = 256 * 1024  # an SSE line or event longer than this is skipped, not kept
DONE = b"[DONE]"  # OpenAI's last event: the end of the stream, not a payload


class EventStream:
    """The data of each event of one stream, as the bytes that complete it are fed."""

    def __init__(self, max_event_bytes: int = EVENT_BYTES) -> None:
        self._max_bytes = max_event_bytes
        self._line = bytearray()  # the line being received
        self._data = bytearray()  # the data lines of the event being received
        self._is_line_dropped = False  # the line went past the limit: drop it to its end
        self._is_event_dropped = False  # the event lost a line: drop it to its blank line
        self._completed: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of the events ``chunk`` completes, in order (those with no data left out)."""
        if (
            chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and chunk[-3:-2] != b"\r"  # "data: x\r\n\n": the line parser drops the \r
            and not (self._line or self._data or self._is_line_dropped or self._is_event_dropped)
            and len(chunk) <= self._max_bytes
        ):
            # One whole one-line event, nothing pending: how a child streams a token (once an
            # event, on the stream's hot path), taken without the line-by-line machinery.
            return [chunk[6:-2]] if len(chunk) > 8 else []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._is_line_dropped:
                self._is_line_dropped = False
            else:
                line = chunk[start:end]
                if self._line:
                    line = bytes(self._line) + line
                    self._line.clear()
                self._take_line(line.removesuffix(b"\r"))
            start = end + 1
        if not self._is_line_dropped:
            self._line += chunk[start:]
            if len(self._line) > self._max_bytes:
                self._line.clear()
                self._is_line_dropped = True
                self._drop_event()
        return self._taken()

    def end(self) -> list[bytes]:
        """The stream has ended (or was cut short): the data of the event it left unfinished,
        which still counts, if it has any."""
        if not self._is_line_dropped:
            self._take_line(bytes(self._line).removesuffix(b"\r"))
        self._line.clear()
        self._is_line_dropped = False
        self._take_line(b"")
        return self._taken()

    def _taken(self) -> list[bytes]:
        completed, self._completed = self._completed, []
        return completed

    def _take_line(self, line: bytes) -> None:
        if len(line) > self._max_bytes:  # as one that arrived in pieces would have been
            self._drop_event()
            return
        if not line:
            if self._data and not self._is_event_dropped:
                self._completed.append(bytes(self._data))
            self._data.clear()
            self._is_event_dropped = False
        elif self._is_event_dropped:
            return
        elif line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            if self._data:
                self._data += b"\n"
            self._data += value
            if len(self._data) > self._max_bytes:
                self._drop_event()

    def _drop_event(self) -> None:
        self._data.clear()
        self._is_event_dropped = True


def is_event_stream(content_type: str) -> bool:
    """Whether an answer whose ``Content-Type`` is ``content_type`` is Server-Sent Events."""
    return content_type.lower().startswith("text/event-stream")


def json_payloads(events: Iterable[bytes]) -> Iterator[Any]:
    """The JSON values among ``events``' data; ``[DONE]`` and data that is not JSON (or nests
    too deep for the parser) skipped."""
    for data in events:
        if data == DONE:
            continue
        try:
            yield json.loads(data)
        except (ValueError, RecursionError):
            continue
