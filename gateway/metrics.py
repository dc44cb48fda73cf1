"""Prometheus metrics of the gateway.

Metrics live in a registry of their own. Under gunicorn with several
processes, ``PROMETHEUS_MULTIPROC_DIR`` is set and /metrics aggregates every
process's files instead. The launcher's processes (gateway/launcher_status.py)
are read from their file at each scrape, in either mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.launcher_status import SupervisedCollector

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self, launcher_status_file: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        #: The launcher's processes, if it names their file: in this registry, and in each multiprocess one.
        self._supervised = None if launcher_status_file is None else SupervisedCollector(launcher_status_file)
        if self._supervised is not None:
            self.registry.register(self._supervised)
        self.requests = Counter(
            "gateway_requests", "Requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.model_requests = Counter(
            "gateway_model_requests", "Requests by the model that answered (X-Model-Name; empty: none) and status.",
            ["model", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Time to answer a request, retries included.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.retries = Counter(
            "gateway_retries", "Requests tried again on another worker of their model, by reason.", ["reason", "model"],
            registry=self.registry,
        )
        self.backend_up = Gauge(
            "gateway_backend_up", "1 when the worker passes its health check, by the model it serves.",
            ["backend", "model"],
            registry=self.registry, multiprocess_mode="max",
        )
        self.in_flight = Gauge(
            "gateway_in_flight", "Requests being proxied.", registry=self.registry, multiprocess_mode="livesum"
        )
        self.outlier_ejections = Counter(
            "gateway_outlier_ejections", "Workers taken out of rotation after failed requests in a row.",
            ["backend", "model"], registry=self.registry,
        )
        self.shed = Counter(
            "gateway_shed",
            "Requests the gateway itself answered 503 (no healthy worker, all busy), by reason and model.",
            ["reason", "model"], registry=self.registry,
        )
        self.batch_rows = Histogram(
            "gateway_batch_rows", "Rows per worker call of gathered /predict rows (not those that went at once).",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_waiting_rows = Gauge(
            "gateway_batch_waiting_rows", "/predict rows waiting for a worker call to be gathered into.",
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.batched_calls = Counter(
            "gateway_batched_calls", "Worker /batch_predict calls carrying gathered /predict requests.",
            registry=self.registry,
        )
        self.batch_fallbacks = Counter(
            "gateway_batch_fallbacks", "Batches a worker refused (by its status), sent again one row at a time.",
            ["status"], registry=self.registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            if self._supervised is not None:
                registry.register(self._supervised)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
