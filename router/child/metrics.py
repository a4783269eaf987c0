"""``/metrics``: the engine's counters and the queue's state in Prometheus' text format, with
llama-server's names, HELP lines and types, so that its dashboards work unchanged.

As llama-server's, the two throughput gauges are averages over the window since the previous
scrape (each scrape starts a new window); the counters run from the start.

llama-server serves ``/metrics`` only with ``--metrics``; the child always does, as it does
``/slots`` (which says more about the requests than these counters): what guards one guards
the other, the child's ``--api-key`` or, behind the router, the router's own keys. A flag
would only make operators restart their models to be scraped.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.child.engine import EngineMetrics

CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class QueueState:
    requests_processing: int  # slots in use (a request with n choices holds n)
    requests_deferred: int  # requests waiting for their slots


class MetricsPage:
    """Renders ``/metrics``; remembers the counters of the previous scrape for the gauges."""

    def __init__(self) -> None:
        self._previous = EngineMetrics()

    def render(self, metrics: EngineMetrics, queue: QueueState) -> str:
        previous, self._previous = self._previous, metrics
        counters = (
            (
                "prompt_tokens_total",
                "Number of prompt tokens processed, excluding cached tokens",
                metrics.prompt_tokens_total,
            ),
            (
                "prompt_tokens_cached_total",
                "Number of prompt tokens reused from the cache",
                metrics.prompt_tokens_cached_total,
            ),
            (
                "prompt_seconds_total",
                "Total time spent processing prompts",
                metrics.prompt_seconds_total,
            ),
            (
                "tokens_predicted_total",
                "Number of generation tokens processed",
                metrics.tokens_predicted_total,
            ),
            (
                "tokens_predicted_seconds_total",
                "Total time spent generating tokens",
                metrics.tokens_predicted_seconds_total,
            ),
            (
                "n_decode_total",
                "Total number of llama_decode() calls, excluding speculative decoding and "
                "multimodal decoding",
                metrics.n_decode_total,
            ),
            (
                "n_tokens_max",
                "Largest observed sequence length (prompt + generation)",
                metrics.n_tokens_max,
            ),
            # No speculative decoding here: always 0, listed so that dashboards find them.
            ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", 0),
            (
                "spec_decode_num_accepted_tokens_total",
                "Speculative: Total draft tokens accepted by the target model",
                0,
            ),
            (
                "spec_decode_num_drafts_total",
                "Speculative: Total speculative decoding verification steps",
                0,
            ),
        )
        gauges = (
            (
                "prompt_tokens_seconds",
                "Average prompt throughput in tokens/s",
                _rate(
                    metrics.prompt_tokens_total - previous.prompt_tokens_total,
                    metrics.prompt_seconds_total - previous.prompt_seconds_total,
                ),
            ),
            (
                "predicted_tokens_seconds",
                "Average generation throughput in tokens/s",
                _rate(
                    metrics.tokens_predicted_total - previous.tokens_predicted_total,
                    metrics.tokens_predicted_seconds_total
                    - previous.tokens_predicted_seconds_total,
                ),
            ),
            ("requests_processing", "Number of requests processing", queue.requests_processing),
            ("requests_deferred", "Number of requests deferred", queue.requests_deferred),
            (
                "n_busy_slots_per_decode",
                "Average number of busy slots per llama_decode() call",
                metrics.n_busy_slots_total / max(metrics.n_decode_total, 1),
            ),
        )
        lines: list[str] = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, description, value in items:
                lines += [
                    f"# HELP llamacpp:{name} {description}",
                    f"# TYPE llamacpp:{name} {kind}",
                    f"llamacpp:{name} {_number(value)}",
                ]
        return "\n".join(lines) + "\n"


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
