"""What `router` exports is its public surface; changing it is a decision, not an accident."""

from __future__ import annotations

import router


def test_public_names() -> None:
    assert sorted(router.__all__) == [
        "Denial",
        "ModelInfo",
        "PluginContext",
        "Principal",
        "RequestInfo",
        "Usage",
        "__version__",
        "hookimpl",
    ]
    for name in router.__all__:
        assert getattr(router, name) is not None
