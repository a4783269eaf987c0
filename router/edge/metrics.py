"""``GET /metrics``: the router's own metrics in Prometheus' text format (``prometheus_client``).

Made from two sources, each said once elsewhere: the requests, from their records
(``observe.py``: status, error type, tokens, the wait for a load or a slot, latencies); the
models' lifecycle, from the pool's events (``models/events.py``: loads and their duration,
unloads by reason, evictions among them, crashes, restarts). Queue lengths and requests in
flight are read from the pool when scraped; the router process' CPU and memory come from
``prometheus_client``'s process collector.

Each router owns its registry (two routers in one process do not clash). Every label takes
bounded values, so that no client can grow the label sets: ``model`` is a listed model's id
(``""`` for a request that named none or an unknown one), ``route`` one of the app's own
routes or the forwarded OpenAI ones (else ``"other"``), ``type`` an error type of
``errors.py``'s tree (else ``"other"``), ``reason`` one of the events' unload reasons.

``GET /metrics?model=x`` is not this: it forwards to that model's child (llama-server's
``llamacpp:`` names), as every other route with a model does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from quart import Response, request
from quart_trio import QuartTrio

from router.edge.fast_path import FAST_PATHS
from router.edge.observe import RequestRecord
from router.errors import RouterError
from router.models.events import (
    MODEL_STATUS,
    STATUS_CHANGE,
    UNLOAD_EVICTED,
    UNLOAD_IDLE,
    UNLOAD_REMOVED,
    UNLOAD_REQUESTED,
    UNLOAD_SETTINGS,
    UNLOAD_SHUTDOWN,
    Event,
)
from router.models.pool import ModelPool

NAMESPACE = "llama_router"
# Why a model was unloaded, as the pool's events say (``data.reason`` on ``unloading``).
UNLOAD_REASONS = frozenset(
    {
        UNLOAD_REQUESTED,
        UNLOAD_IDLE,
        UNLOAD_EVICTED,
        UNLOAD_SETTINGS,
        UNLOAD_SHUTDOWN,
        UNLOAD_REMOVED,
    }
)
OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ROUTER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


def _error_types() -> frozenset[str]:
    """Every ``error.type`` the router's error tree can answer with, and the HTTP ones."""
    found: set[str] = {"not_found_error", "invalid_request_error", "server_error"}
    pending: list[type[RouterError]] = [RouterError]
    while pending:
        kind = pending.pop()
        found.add(kind.error_type)
        pending.extend(kind.__subclasses__())
    return frozenset(found)


class RouterMetrics:
    """The router's metrics, in a registry of its own; fed records and events, never waits."""

    def __init__(self, pool: ModelPool, routes: Callable[[], Iterable[str]]) -> None:
        """``routes``: the app's own paths, asked once the first request is counted (when
        every route, a plugin's included, has been added)."""
        self.pool = pool
        self._routes = routes
        self._known_routes: frozenset[str] | None = None
        self.error_types = _error_types()
        self._series_cache: dict[tuple[int, tuple[str, ...]], Any] = {}
        disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide: no *_created
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(namespace=NAMESPACE, registry=registry)
        registry.register(_PoolCollector(pool))
        by_model = ["model"]
        self.requests = Counter(
            f"{NAMESPACE}_requests_total",
            "Requests answered, by model, route and status class (2xx, 4xx, 5xx...)",
            ["model", "route", "status_class"], registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            f"{NAMESPACE}_request_errors_total",
            "Requests answered with an error, by model and OpenAI error type; 'cut': an answer "
            "that broke off after it began",
            ["model", "type"], registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{NAMESPACE}_prompt_tokens_total",
            "Prompt tokens of forwarded requests, as their answers' usage says", by_model,
            registry=registry,
        )  # fmt: skip
        self.completion_tokens = Counter(
            f"{NAMESPACE}_completion_tokens_total",
            "Tokens generated for forwarded requests, as their answers' usage says", by_model,
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            f"{NAMESPACE}_request_duration_seconds",
            "Whole requests, first byte in to last byte out, as the router saw them", by_model,
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.router_latency = Histogram(
            f"{NAMESPACE}_router_latency_seconds",
            "The router's own share of each request: neither waiting in the queue nor the "
            "model's work", by_model, buckets=ROUTER_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            f"{NAMESPACE}_queue_wait_seconds",
            "How long forwarded requests waited for their model (a load, a slot) before "
            "being sent to it", by_model, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.waits = Counter(
            f"{NAMESPACE}_request_waits_total",
            "Forwarded requests that waited, by what for: 'load' (their model was not "
            "loaded), 'slot' (--models-max was reached)",
            ["model", "for"], registry=registry,
        )  # fmt: skip
        self.loads = Counter(
            f"{NAMESPACE}_model_loads_total", "Loads that ended with the model ready", by_model,
            registry=registry,
        )  # fmt: skip
        self.load_duration = Histogram(
            f"{NAMESPACE}_model_load_duration_seconds",
            "How long each successful load took, from start to ready", by_model,
            buckets=LOAD_BUCKETS, registry=registry,
        )  # fmt: skip
        self.load_failures = Counter(
            f"{NAMESPACE}_model_load_failures_total",
            "Loads that ended with the model's process exiting before it was ready", by_model,
            registry=registry,
        )  # fmt: skip
        self.unloads = Counter(
            f"{NAMESPACE}_model_unloads_total",
            "Unloads begun, by reason: requested, idle (ttl), evicted (to make room for "
            "another model), settings, shutdown, removed",
            ["model", "reason"], registry=registry,
        )  # fmt: skip
        self.crashes = Counter(
            f"{NAMESPACE}_model_crashes_total",
            "Loaded models whose process exited unasked (killed, crashed, hung)", by_model,
            registry=registry,
        )  # fmt: skip
        self.restarts = Counter(
            f"{NAMESPACE}_model_restarts_total",
            "Loads that restart a model (new settings, after a crash)", by_model,
            registry=registry,
        )  # fmt: skip

    def _series(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: a request's counting is on the hot path, and
        the label sets are bounded."""
        key = (id(metric), labels)
        series = self._series_cache.get(key)
        if series is None:
            series = self._series_cache[key] = metric.labels(*labels)
        return series

    def model_label(self, model_id: str) -> str:
        """``model_id`` if it is a listed model; else ``""`` (a client's made-up name)."""
        return model_id if model_id in self.pool.models else ""

    def record_request(self, record: RequestRecord) -> None:
        """Count one finished request (``observe.observed``'s report)."""
        model = self.model_label(record.model)
        if self._known_routes is None:
            self._known_routes = frozenset(self._routes()) | FAST_PATHS
        route = record.path.partition("?")[0]
        route = route if route in self._known_routes else OTHER
        self._series(self.requests, model, route, f"{record.status // 100}xx").inc()
        if record.is_cut:
            self._series(self.errors, model, "cut").inc()
        elif record.status >= 400:
            kind = record.error_type if record.error_type in self.error_types else OTHER
            self._series(self.errors, model, kind).inc()
        if record.usage is not None:
            self._series(self.prompt_tokens, model).inc(record.usage.prompt_tokens)
            self._series(self.completion_tokens, model).inc(record.usage.completion_tokens)
        self._series(self.duration, model).observe(record.duration_s)
        self._series(self.router_latency, model).observe(record.router_s)
        if record.was_forwarded:
            self._series(self.queue_wait, model).observe(record.queue_wait_s)
        if record.waited_for_load:
            self._series(self.waits, model, "load").inc()
        if record.waited_for_slot:
            self._series(self.waits, model, "slot").inc()

    def on_event(self, event: Event) -> None:
        """Count a model's lifecycle event (the pool's ``EventHub`` listener)."""
        data = event.data or {}
        status = data.get("status")
        model = self.model_label(event.model)
        if event.event == MODEL_STATUS and status == "loading" and data.get("restart"):
            self.restarts.labels(model).inc()
        if event.event != STATUS_CHANGE:
            return
        if status == "loaded":
            self.loads.labels(model).inc()
            load_s = data.get("load_s")
            if isinstance(load_s, int | float) and not isinstance(load_s, bool):
                self.load_duration.labels(model).observe(load_s)
        elif status == "unloading":
            reason = data.get("reason")
            self.unloads.labels(model, reason if reason in UNLOAD_REASONS else OTHER).inc()
        elif status == "unloaded" and data.get("failed"):
            failures = self.load_failures if data.get("was_loading") else self.crashes
            failures.labels(model).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    """What the pool knows now, read when scraped: queue lengths, requests in flight."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            f"{NAMESPACE}_queue_length",
            "Requests waiting for their model now (for its load, or for a slot)",
            labels=["model"],
        )
        in_flight = GaugeMetricFamily(
            f"{NAMESPACE}_requests_in_flight",
            "Requests a model is serving now",
            labels=["model"],
        )
        for model_id, state in list(self.pool.models.items()):
            waiting.add_metric([model_id], self.pool.waiting(model_id))
            in_flight.add_metric([model_id], state.in_flight)
        yield waiting
        yield in_flight


def register_metrics(app: QuartTrio, pool: ModelPool) -> RouterMetrics:
    """Add ``GET /metrics`` to ``app`` and count the pool's events; the metrics, for the
    request records (``server.py`` hands them ``observe.observed``'s reports)."""
    metrics = RouterMetrics(
        pool, lambda: [rule.rule for rule in app.url_map.iter_rules() if not rule.arguments]
    )
    pool.events.listen(metrics.on_event)
    app.extensions["llama_router_metrics"] = metrics

    @app.get("/metrics")
    async def metrics_page() -> Response:
        if request.args.get("model") is not None:  # the child's own (llama-server's names)
            forward = cast(Callable[..., Awaitable[Response]], app.view_functions["forward"])
            return await forward(path="metrics")
        return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    return metrics
