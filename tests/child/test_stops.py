"""StopScanner cuts at the first stop string, however the text is split into pieces."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from router.child.stops import StopScanner


def _run(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    out = []
    for piece in pieces:
        text, hit = scanner.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + scanner.flush(), False


def _expected(text: str, stops: list[str]) -> tuple[str, bool]:
    """Character by character: cut at the first stop completed (the longest, on a tie)."""
    for end in range(1, len(text) + 1):
        lengths = [len(stop) for stop in stops if stop and text[:end].endswith(stop)]
        if lengths:
            return text[: end - max(lengths)], True
    return text, False


@settings(max_examples=300)
@given(
    text=st.text(alphabet="abc\n", max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
)
def test_output_is_the_text_up_to_the_first_stop_whatever_the_split(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert _run(pieces, stops) == _expected(text, stops)


def test_a_possible_stop_prefix_is_held_back_until_resolved() -> None:
    scanner = StopScanner(["</end>"])
    assert scanner.feed("hello </e") == ("hello ", False)
    assert scanner.feed("nd")[0] == ""
    assert scanner.feed("x") == ("</endx", False)


def test_no_stops_passes_everything_through() -> None:
    scanner = StopScanner([])
    assert scanner.feed("abc") == ("abc", False)
    assert scanner.flush() == ""


def test_the_stop_completed_first_wins_even_if_another_started_earlier() -> None:
    # "\naa" starts first but "a" is complete one character sooner: generation stops there.
    scanner = StopScanner(["a", "\naa"])
    assert scanner.feed("\na") == ("\n", True)
