"""One model as the router knows it: its settings, where it stands, and what ``GET /models``
shows. The pool changes it; the scheduler sees it as a ``ModelView``; plugins as a ModelInfo."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from router.models.scheduler import ModelView, Status
from router.processes.wire import ChildConnections
from router.spec import ModelSpec

RECENT_LINES = 500  # a model's last lines of output kept for GET /models/logs

AT_ONCE_S = 1e-9  # the ttl of "as soon as it is idle": a ttl of 0 means never


@dataclass(frozen=True)
class UpstreamHealth:
    """The last check of a remote model's server (or of the peer that lists it)."""

    checked_at: float  # wall-clock seconds (time.time())
    is_ok: bool
    error: str = ""  # why not, in words; never the key


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
    is_falling_asleep: bool = False  # stopping after idling for its ttl: then it is SLEEPING
    # Its child's last lines (all its runs: a crash's lines outlive the process).
    recent_lines: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_LINES))
    # A client's idle ttl for the child running now (Ollama's keep_alive), forgotten when it
    # exits: None: the spec's ttl; inf: never unloaded; 0: unloaded as soon as it is idle.
    keep_alive_s: float | None = None
    # Pinned or unpinned at run time (POST /models/pin), when that differs from its conf.d
    # ``pinned``; None: as the file says. Kept in memory only: the router's restart forgets
    # it, and so does a change of ``pinned`` in the model's file (the pool's apply_catalog).
    pinned_at_run_time: bool | None = None
    # A remote model's last health check (models/remote.py); None: not checked yet.
    health: UpstreamHealth | None = None

    def __post_init__(self) -> None:
        if self.spec.upstream is not None:
            self.status = Status.REMOTE

    @property
    def is_pinned(self) -> bool:
        """Whether it is never evicted nor unloaded when idle: the run-time pin, else the
        file's ``pinned``."""
        if self.pinned_at_run_time is not None:
            return self.pinned_at_run_time
        return self.spec.is_pinned

    @property
    def idle_ttl_s(self) -> float:
        """Idle seconds before it is unloaded, in the scheduler's terms (0: never)."""
        if self.keep_alive_s is None:
            return self.spec.ttl_s
        if math.isinf(self.keep_alive_s):
            return 0.0
        return max(self.keep_alive_s, AT_ONCE_S)

    def view(self) -> ModelView:
        return ModelView(
            id=self.spec.id,
            status=self.status,
            in_flight=self.in_flight,
            last_used=self.last_used,
            is_pinned=self.is_pinned,
            retry_at=self.retry_at,
            ttl_s=self.idle_ttl_s,
        )
