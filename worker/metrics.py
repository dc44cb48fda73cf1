"""Prometheus metrics of one worker, in a registry of its own (no globals).

What counts predictions, rows and their time carries a ``version`` label: the model version that
computed them (two can serve at once: an active one and a canary).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WorkerMetrics:
    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        size_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.requests = Counter(
            "worker_requests", "HTTP requests by route and status.", ["route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "worker_request_duration_seconds", "Time to answer a request.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.predictions = Counter(
            "worker_predictions", "Prediction requests answered, by route and the version that computed them.",
            ["route", "version"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "worker_batch_size", "Rows per model call, before padding, by version.", ["version"],
            buckets=size_buckets, registry=self.registry,
        )
        self.padding_fraction = Histogram(
            "worker_batch_padding_fraction", "Share of a padded batch that is padding.",
            buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0), registry=self.registry,
        )
        self.queue_wait = Histogram(
            "worker_queue_wait_seconds", "Time a request waited in the batch queue, by version.", ["version"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "worker_batch_compute_seconds", "Model call time per batch, by version.", ["version"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.compilations = Counter(
            "worker_jit_compilations", "Traces of predict_batch: each is an XLA compilation.",
            registry=self.registry,
        )
        self.ready = Gauge("worker_ready", "1 once the model is loaded and warm.", registry=self.registry)

    def observe_batch(self, *, size: int, compute_s: float, waits_s: Iterable[float], version: str = "") -> None:
        self.batch_size.labels(version).observe(size)
        self.compute_seconds.labels(version).observe(compute_s)
        queue_wait = self.queue_wait.labels(version)
        for wait in waits_s:
            queue_wait.observe(wait)
