"""Stop strings: cut generated text at the first stop string, even one split across tokens.

"First" means the first to be completed, as if the text came one character at a time; when
several complete at the same character, the longest wins. So the result does not depend on how
the text was split into tokens. Text that might be the beginning of a stop string is held back
until the next piece shows whether it is, so a client never sees part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held = ""
        self.hit: str | None = None  # the stop string found, once one is

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what may be sent now, and whether a stop string was hit.

        After a hit, the returned text is everything before the stop string, and the
        scanner should not be fed again.
        """
        if not self._stops:
            return text, False
        held = self._held + text
        # Any stop that ends in the new text starts within the held part (which is the
        # longest end of the old text that begins a stop), so only new end positions matter.
        for end in range(len(self._held) + 1, len(held) + 1):
            found = [stop for stop in self._stops if held.endswith(stop, 0, end)]
            if found:
                self._held = ""
                self.hit = max(found, key=len)
                return held[: end - len(self.hit)], True
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
