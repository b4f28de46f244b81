"""Prometheus metrics of a server: requests, latency, entities per request, model version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """One registry per server, so that several servers in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "skewless_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "skewless_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.entities = Histogram(
            "skewless_request_entities",
            "Entities per feature request",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.entity_errors = Counter(
            "skewless_entity_errors",
            "Entities answered with an error instead of a forecast",
            registry=self.registry,
        )
        self.model_version = Gauge(
            "skewless_model_version",
            "Registered model version being served",
            registry=self.registry,
        )
        self.reloads = Counter(
            "skewless_model_reloads",
            "Alias reloads by outcome",
            ["outcome"],
            registry=self.registry,
        )
