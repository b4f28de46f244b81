"""Prometheus metrics of a server: requests and latency by endpoint and model version (every
answer has one: the version that answered, else the one being served), the time of each stage
of a feature request, errors by type, entities per request, forecast values, reloads, the
request log.

Under ``serve --workers N`` prometheus_client runs in multiprocess mode (its folder set in the
environment before it is imported): every worker writes its samples to files there, and the
exposition adds up all workers'. Only our own variable turns the adding up on: Feast sets
prometheus_client's variable to a folder of its own in any process that imports its metrics
module, and every server started from such a process would add up the others' samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

WORKERS_METRICS_ENV = "SKEWLESS_WORKERS_METRICS_DIR"  # set by serve --workers for its workers
# Where prometheus_client (both names of its variable) keeps multiprocess samples.
PROMETHEUS_ENVS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """One registry per server, so that several servers in one process never collide.

    ``forecast_buckets`` are the histogram edges of forecast values; servers pass the training
    deciles of the targets, so the histogram reads as "where forecasts fall in the training data".
    """

    def __init__(self, forecast_buckets: Sequence[float] = ()) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "skewless_requests",
            "HTTP requests by endpoint, status and model version",
            ["endpoint", "status", "version"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "skewless_request_seconds",
            "Request latency by endpoint and model version",
            ["endpoint", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "skewless_stage_seconds",
            "Each stage of a feature request (fetch, prepare, forecast), timed where it runs",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.entities = Histogram(
            "skewless_request_entities",
            "Entities per feature request",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.errors = Counter(
            "skewless_errors",
            "Errors by type; scope 'request' failed a whole request, 'entity' one entity of it",
            ["type", "scope"],
            registry=self.registry,
        )
        self.forecasts = Histogram(
            "skewless_forecast_value",
            "Each forecast entity's mean over the horizon, by target, in original units",
            ["target"],
            buckets=sorted(set(forecast_buckets)) or Histogram.DEFAULT_BUCKETS,
            registry=self.registry,
        )
        self.model_version = Gauge(
            "skewless_model_version",
            "Registered model version being served (one sample per live worker)",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "skewless_model_reloads",
            "Alias reloads by outcome: swapped, unchanged, failed, refused (the online store "
            "cannot feed the version)",
            ["outcome"],
            registry=self.registry,
        )
        self.pushed_rows = Counter(
            "skewless_pushed_rows",
            "Rows sent to POST /push by outcome: written (new), already_stored (sent before, "
            "not written again), refused (their request failed validation; nothing written)",
            ["outcome"],
            registry=self.registry,
        )
        self.request_log = Counter(
            "skewless_request_log_records",
            "Request log records by outcome: written, failed (database down), dropped (queue full)",
            ["outcome"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text of this server: of every worker, when there are several."""
        folder = os.environ.get(WORKERS_METRICS_ENV)
        if folder is None:
            return generate_latest(self.registry)
        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers, path=folder)
        return generate_latest(workers)

    def close(self) -> None:
        """A worker that stops takes its live gauges with it."""
        folder = os.environ.get(WORKERS_METRICS_ENV)
        if folder is not None:
            multiprocess.mark_process_dead(os.getpid(), path=folder)
