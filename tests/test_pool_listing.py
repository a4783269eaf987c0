"""A model listed or unlisted (``ModelSpec.is_listed``, preset ``dedup-cache-models``): the
listing changes at once and a loaded model keeps its child. A stand-in supervisor: no
processes."""

from __future__ import annotations

import trio

from router.models.pool import ModelPool
from router.models.scheduler import Status
from tests.test_pool import attached_pool
from tests.test_pool_pin import loaded, spec


def is_listed(pool: ModelPool, model: str) -> bool:
    """The model's listing as GET /models reads it, read anew each time."""
    return pool.models[model].spec.is_listed


async def test_unlisting_a_loaded_model_keeps_it_loaded(nursery: trio.Nursery) -> None:
    pool, supervisor = attached_pool({"a": spec("a")}, nursery, models_max=1)
    await loaded(pool, "a")
    pool.apply_catalog({"a": spec("a", is_listed=False)}, {})
    assert not is_listed(pool, "a")
    pool.apply_catalog({"a": spec("a")}, {})
    assert is_listed(pool, "a")
    assert pool.models["a"].status is Status.LOADED and supervisor.stopped == []
    pool.apply_catalog({"a": spec("a", ttl_s=30.0, is_listed=False)}, {})  # another setting too
    assert pool.models["a"].status is Status.UNLOADING  # restarts for that one, as before
