"""The scheduling rules, on plain values: no processes, no clock."""

from __future__ import annotations

import math

from router.models.scheduler import (
    ModelView,
    Plan,
    Status,
    Waiting,
    backoff_s,
    idle_expired,
    plan,
)

LOADED, UNLOADED = Status.LOADED, Status.UNLOADED


def models(*views: ModelView) -> dict[str, ModelView]:
    return {view.id: view for view in views}


def test_requests_for_a_loaded_model_are_admitted() -> None:
    result = plan(
        models(ModelView("a", LOADED)), [Waiting(1, "a"), Waiting(2, "a")], models_max=1, now=0
    )
    assert result == Plan(admit=(1, 2))


def test_requests_for_the_same_model_share_one_load() -> None:
    queue = [Waiting(n, "a") for n in range(8)]
    result = plan(models(ModelView("a", UNLOADED)), queue, models_max=4, now=0)
    assert result.load == ("a",)
    assert result.admit == ()


def test_least_recently_used_idle_model_is_evicted() -> None:
    state = models(
        ModelView("old", LOADED, last_used=1.0),
        ModelView("new", LOADED, last_used=5.0),
        ModelView("want", UNLOADED),
    )
    assert plan(state, [Waiting(1, "want")], models_max=2, now=10).unload == ("old",)


def test_busy_model_is_never_evicted() -> None:
    state = models(
        ModelView("busy", LOADED, in_flight=1, last_used=0.0),
        ModelView("idle", LOADED, last_used=9.0),
        ModelView("want", UNLOADED),
    )
    assert plan(state, [Waiting(1, "want")], models_max=2, now=10).unload == ("idle",)
    all_busy = models(ModelView("busy", LOADED, in_flight=2), ModelView("want", UNLOADED))
    assert plan(all_busy, [Waiting(1, "want")], models_max=1, now=10) == Plan()


def test_pinned_model_is_never_evicted() -> None:
    state = models(ModelView("pinned", LOADED, is_pinned=True), ModelView("want", UNLOADED))
    assert plan(state, [Waiting(1, "want")], models_max=1, now=0) == Plan()


def test_a_pinned_model_is_never_unloaded_when_idle() -> None:
    idle = [
        ModelView("pinned", LOADED, last_used=0.0, ttl_s=5.0, is_pinned=True),
        ModelView("plain", LOADED, last_used=0.0, ttl_s=5.0),
        ModelView("later", LOADED, last_used=8.0, ttl_s=5.0, is_pinned=True),
    ]
    assert idle_expired(idle, now=10.0) == (["plain"], math.inf)


def test_waiters_that_need_the_same_slot_cause_one_eviction() -> None:
    state = models(
        ModelView("a", LOADED), ModelView("b", LOADED, last_used=3.0), ModelView("want", UNLOADED)
    )
    queue = [Waiting(n, "want") for n in range(5)]
    first = plan(state, queue, models_max=2, now=10)
    assert first.unload == ("a",)
    unloading = {**state, "a": ModelView("a", Status.UNLOADING)}
    assert plan(unloading, queue, models_max=2, now=10) == Plan()  # no second eviction


def test_a_slot_being_freed_is_claimed_before_evicting_again() -> None:
    state = models(
        ModelView("gone", Status.UNLOADING),
        ModelView("idle", LOADED),
        ModelView("x", UNLOADED),
        ModelView("y", UNLOADED),
    )
    result = plan(state, [Waiting(1, "x"), Waiting(2, "y")], models_max=2, now=0)
    assert result.unload == ("idle",)  # x takes the slot being freed; y evicts "idle"
    assert result.load == ()


def test_queue_is_fifo_for_slots_but_loaded_models_pass() -> None:
    state = models(
        ModelView("busy", LOADED, in_flight=1), ModelView("x", UNLOADED), ModelView("y", UNLOADED)
    )
    queue = [Waiting(1, "x"), Waiting(2, "y"), Waiting(3, "busy")]
    assert plan(state, queue, models_max=1, now=0) == Plan(admit=(3,))


def test_unlimited_models_never_evict() -> None:
    state = models(*(ModelView(f"m{n}", LOADED) for n in range(50)), ModelView("x", UNLOADED))
    assert plan(state, [Waiting(1, "x")], models_max=0, now=0) == Plan(load=("x",))


def test_model_in_backoff_is_refused_not_restarted() -> None:
    state = models(ModelView("bad", UNLOADED, retry_at=100.0))
    assert plan(state, [Waiting(1, "bad")], models_max=1, now=50) == Plan(refuse=(1,))
    assert plan(state, [Waiting(1, "bad")], models_max=1, now=100) == Plan(load=("bad",))


def test_a_model_waits_while_it_unloads_then_loads_again() -> None:
    state = models(ModelView("a", Status.UNLOADING))
    assert plan(state, [Waiting(1, "a")], models_max=1, now=0) == Plan()
    state = models(ModelView("a", UNLOADED))
    assert plan(state, [Waiting(1, "a")], models_max=1, now=0) == Plan(load=("a",))


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_s(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 32, 60]
    assert backoff_s(100) == 60
    assert not math.isinf(backoff_s(10**6))
