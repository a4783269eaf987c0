"""One model as the router knows it: its settings, where it stands, and what ``GET /models``
shows. The pool changes it; the scheduler sees it as a ``ModelView``; plugins as a ModelInfo."""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.models.scheduler import ModelView, Status
from router.processes.wire import ChildConnections
from router.spec import ModelSpec


@dataclass
class ModelState:
    """One model as the router knows it: what ``GET /models`` shows."""

    spec: ModelSpec
    status: Status = Status.UNLOADED
    in_flight: int = 0
    last_used: float = 0.0
    args: list[str] | None = None
    # From POST /models/load: ``extra_args`` for the start it asked for, then forgotten, so
    # that a later autoload by someone else runs the operator's settings; ``running_extra_args``
    # are those of the child running now.
    extra_args: tuple[str, ...] = ()
    running_extra_args: tuple[str, ...] = ()
    failures: int = 0  # consecutive failed starts or crashes
    retry_at: float = -math.inf
    exit_code: int | None = None
    last_error: str = ""
    is_failed: bool = False
    failure_kind: str = "internal"  # why it could not load, in a word (ModelLoadFailed.kind)
    client: ChildConnections | None = None  # to the child, while it is loaded
    pid: int | None = None  # its process, while it is loaded
    config_error: str = ""  # its conf.d file is broken now; the last good settings stay
    pending_spec: ModelSpec | None = None  # new settings, applied once it is idle
    restart_when_stopped: bool = False  # it was running when its settings changed
    is_retired: bool = False  # its file was deleted: delisted once it has stopped

    def view(self) -> ModelView:
        return ModelView(
            id=self.spec.id,
            status=self.status,
            in_flight=self.in_flight,
            last_used=self.last_used,
            is_pinned=self.spec.is_pinned,
            retry_at=self.retry_at,
            ttl_s=self.spec.ttl_s,
        )
