"""What the proxy passes on to a child, and back."""

from __future__ import annotations

from router.edge.proxy import _forwardable


def test_hop_by_hop_and_expectation_headers_never_cross() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Expect", "100-continue"),
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("X-Secret-Hop", "only for the next hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"),
        ("Authorization", "Bearer key"),
        ("Date", "yesterday"),
        ("X-Request-Id", "42"),
    ]
    assert _forwardable(headers) == [("Content-Type", "application/json"), ("X-Request-Id", "42")]
