"""What `router` exports is its public surface; changing it is a decision, not an accident."""

from __future__ import annotations

import router


def test_public_names() -> None:
    assert sorted(router.__all__) == ["__version__"]
