"""Prometheus metrics: deliveries by outcome, attempts by result, attempt durations,
and gauges read from the store when scraped (pending deliveries, age of the oldest,
disabled and failing subscriptions). Needs the ``[prometheus]`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .errors import ConfigurationError, StoreError
from .models import Attempt, DeliveryStatus
from .stores.base import Stats

__all__ = ["PrometheusMetrics"]

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)


class PrometheusMetrics:
    """Metrics in a ``prometheus_client`` registry (default: the global one).

    Pass it as ``Dispatcher(metrics=...)``; expose the registry as usual
    (``prometheus_client.start_http_server``, or your web framework's endpoint).
    One instance per registry: the names can be registered only once.
    """

    def __init__(self, registry: Any = None, *, namespace: str = "webhook_dispatch") -> None:
        try:
            import prometheus_client
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise ConfigurationError(
                "metrics need prometheus-client: pip install 'webhook-dispatch[prometheus]'"
            ) from None
        self._client = prometheus_client
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.namespace = namespace
        self.deliveries = prometheus_client.Counter(
            "deliveries",
            "Deliveries that reached a final state, by outcome",
            ["outcome"],
            namespace=namespace,
            registry=self.registry,
        )
        self.attempts = prometheus_client.Counter(
            "attempts",
            "Attempts made, by result (success, retry, failure)",
            ["result"],
            namespace=namespace,
            registry=self.registry,
        )
        self.attempt_duration = prometheus_client.Histogram(
            "attempt_duration_seconds",
            "Time from sending a request to reading its (capped) response",
            namespace=namespace,
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._stats: Callable[[], tuple[Stats, float | None]] | None = None
        self.registry.register(_StoreCollector(self))

    def bind(self, stats: Callable[[], tuple[Stats, float | None]]) -> None:
        """Read the gauges from ``stats`` (the dispatcher binds its store here)."""
        self._stats = stats

    def observe_attempt(self, attempt: Attempt, status: DeliveryStatus) -> None:
        """Count one attempt and, when it ended its delivery, the delivery's outcome."""
        self.attempt_duration.observe(attempt.duration)
        if attempt.succeeded:
            result = "success"
        elif status is DeliveryStatus.PENDING:
            result = "retry"
        else:
            result = "failure"
        self.attempts.labels(result).inc()
        if status.is_final:
            self.deliveries.labels(status.value).inc()


class _StoreCollector:
    """Gauges computed from `Store.stats` at scrape time."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # gauges are read lazily; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        read = self._metrics._stats
        if read is None:
            return
        try:
            stats, age = read()
        except StoreError:
            return  # the scrape goes on without store gauges
        from prometheus_client.core import GaugeMetricFamily as gauge

        prefix = self._metrics.namespace
        yield gauge(f"{prefix}_pending_deliveries", "Deliveries waiting", value=stats.pending)
        yield gauge(f"{prefix}_delivering_deliveries", "Attempts in flight", value=stats.delivering)
        yield gauge(
            f"{prefix}_oldest_pending_age_seconds",
            "Age of the oldest pending delivery (0 when none)",
            value=age or 0.0,
        )
        yield gauge(
            f"{prefix}_subscriptions", "Subscriptions in the store", value=stats.subscriptions
        )
        yield gauge(
            f"{prefix}_disabled_subscriptions",
            "Disabled subscriptions",
            value=stats.disabled_subscriptions,
        )
        yield gauge(
            f"{prefix}_failing_subscriptions",
            "Enabled subscriptions whose last attempt failed",
            value=stats.failing_subscriptions,
        )
