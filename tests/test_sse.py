"""The edge's one Server-Sent Events parser (router/edge/sse.py)."""

from __future__ import annotations

from router.edge.sse import EVENT_BYTES, EventStream, json_payloads

WIRE = (
    b": a comment\n\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: named\ndata: first\ndata:second\n\n"
    b"id: 7\n\n"  # no data: no event
    b"data: [DONE]\n\n"
)


def test_events_are_the_same_whatever_the_pieces() -> None:
    for size in (1, 2, 5, len(WIRE)):
        events = EventStream()
        data = [
            event
            for start in range(0, len(WIRE), size)
            for event in events.feed(WIRE[start : start + size])
        ]
        assert data == [b'{"a": 1}', b"first\nsecond", b"[DONE]"]
        assert events.end() == []


def test_a_stream_cut_short_gives_its_unfinished_event_at_the_end() -> None:
    events = EventStream()
    assert events.feed(b'data: {"a": 1}\n\ndata: {"b"') == [b'{"a": 1}']
    assert events.feed(b": 2}") == []
    assert events.end() == [b'{"b": 2}']


def test_payloads_skip_done_and_what_is_not_json() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000  # deeper than the parser goes: skipped, not raised
    assert list(json_payloads([b'{"a": 1}', b"[DONE]", b"not json", nested, b"2"])) == [
        {"a": 1},
        2,
    ]


def test_a_huge_event_is_dropped_and_the_next_one_kept() -> None:
    events = EventStream()
    huge = b"data: " + b"x" * (2 * EVENT_BYTES)
    kept = [
        event
        for start in range(0, len(huge), 4096)
        for event in events.feed(huge[start : start + 4096])
    ]
    kept += events.feed(b"\n\ndata: still here\n\n")  # its own event: after a blank line
    assert kept == [b"still here"]
    events.feed(b"data: " + b"y" * (EVENT_BYTES // 2) + b"\n")
    assert events.feed(b"data: " + b"z" * (EVENT_BYTES // 2) + b"\n\ndata: next\n\n") == [b"next"]


def test_whole_events_a_chunk_are_read_as_the_line_parser_reads_them() -> None:
    # A child streams one whole event a chunk, which the parser takes without splitting lines;
    # those chunks, and the same bytes in pieces, give the same events, whatever came before.
    chunks = [
        b'data: {"a": 1}\n\n',
        b"data: \n\n",  # no data: no event
        b"data: x\ndata: y\n\n",  # two lines: not the one-line case
        b'data: {"b": 2}\r\n\r\n',
        b'data: {"c": 3}\r\n\n',
        b"data: [DONE]\n\n",
        b"data: " + b"z" * EVENT_BYTES + b"\n\n",  # too long: dropped either way
        b"data: after\n\n",
    ]
    for pending in (b"", b"data: unfin", b": comment\n", b"data: open\n"):
        whole, pieces = EventStream(), EventStream()
        taken_whole = whole.feed(pending) + [e for chunk in chunks for e in whole.feed(chunk)]
        wire = pending + b"".join(chunks)
        taken_pieces = [
            e for start in range(0, len(wire), 3) for e in pieces.feed(wire[start : start + 3])
        ]
        assert taken_whole == taken_pieces
        assert whole.end() == pieces.end()
