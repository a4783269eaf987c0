"""Stop strings: cut generated text at the first stop string, even one split across tokens.

Text that might be the beginning of a stop string is held back until the next piece shows
whether it is; so a client never sees part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what may be sent now, and whether a stop string was hit.

        After a hit, the returned text is everything before the stop string, and the
        scanner should not be fed again.
        """
        held = self._held + text
        first_hit = min(
            (index for stop in self._stops if (index := held.find(stop)) >= 0), default=-1
        )
        if first_hit >= 0:
            self._held = ""
            return held[:first_hit], True
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """The held-back text, once generation ended without a stop string."""
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-length:]):
                    longest = length
                    break
        return longest
