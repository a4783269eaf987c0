"""The pool's bookkeeping, with a stand-in supervisor: no processes."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from router.catalog import ModelSpec
from router.pool import ModelPool
from router.scheduler import Status


class RecordingSupervisor:
    """Records what the pool asks for; the test plays the children's part."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []

    def start(self, spec: ModelSpec, *, extra_args: tuple[str, ...] = ()) -> list[str]:
        self.started.append(spec.id)
        return ["child", spec.id]

    def stop(self, model_id: str) -> None:
        self.stopped.append(model_id)


def new_pool(nursery: trio.Nursery) -> tuple[ModelPool, RecordingSupervisor]:
    pool = ModelPool({"m": ModelSpec(id="m", path=Path("m.gguf"))}, models_max=1)
    supervisor = RecordingSupervisor()
    pool.attach(supervisor, nursery)  # type: ignore[arg-type]
    return pool, supervisor


async def test_a_request_cancelled_at_admission_gives_its_slot_back(
    nursery: trio.Nursery,
) -> None:
    pool, supervisor = new_pool(nursery)
    async with trio.open_nursery() as loading:
        loading.start_soon(_use_once, pool)
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.started == ["m"]
        pool.child_ready("m", "unix:/nonexistent.sock", 1)
    assert pool.models["m"].status is Status.LOADED
    assert pool.models["m"].in_flight == 0
    with trio.CancelScope() as scope:
        scope.cancel()  # already cancelled when it is admitted
        async with pool.lease("m", autoload=True):
            raise AssertionError("a cancelled request must not get the model")
    assert pool.models["m"].in_flight == 0  # not busy for ever: it can still be evicted


async def _use_once(pool: ModelPool) -> None:
    async with pool.lease("m", autoload=True):
        pass
