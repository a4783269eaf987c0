"""Which replica holds which model, for the ingress's ``/models``.

Ray Serve keeps its own table of multiplexed model ids per replica, but only inside its
controller and routers (no public API reads it), and a handle cannot address one replica. So
each replica reports what its router holds here: after every load and unload, and on every Ray
health check, which doubles as a heartbeat. A replica that stops reporting (killed, or its node
gone) is dropped after ``expiry_s``: until then ``/models`` may still list it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ray import serve


@dataclass(frozen=True)
class ReplicaReport:
    """What one replica said last: its id, node, router pid and the router's models by status."""

    replica: str
    node: str
    router_group: int
    models: dict[str, str]  # model id → the router's status (loading, loaded, unloading)


class ModelRegistry:
    """The latest report of each live replica (one replica of this deployment)."""

    def __init__(self, expiry_s: float) -> None:
        self._expiry_s = expiry_s
        self._reports: dict[str, tuple[float, ReplicaReport]] = {}

    def report(self, report: ReplicaReport) -> None:
        self._reports[report.replica] = (time.monotonic(), report)

    def forget(self, replica: str) -> None:
        """A replica that is stopping says so, rather than waiting to expire."""
        self._reports.pop(replica, None)

    def snapshot(self) -> list[dict[str, Any]]:
        """Reports newer than ``expiry_s``, the oldest replica first; older ones are dropped."""
        now = time.monotonic()
        self._reports = {
            replica: (at, report)
            for replica, (at, report) in self._reports.items()
            if now - at <= self._expiry_s
        }
        return [asdict(report) for _, report in self._reports.values()]


Registry = serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})(ModelRegistry)
