"""Every key's usage: counted in memory per request, written to the job database in one flush every few seconds.

A request adds to one in-memory cell (key, model, hour): requests, rows, job rows and model time (the workers'
``X-Inference-Time-Ms``). ``USAGE_FLUSH_S`` later (and at shutdown) the cells go to the database in one upsert
each, adding to what other gateways wrote; a flush that fails keeps its cells for the next one, so an outage of
the database loses nothing while the process lives. The hot path pays a dict update and two counter increments.

The same counts go to Prometheus per key and model. Key ids are labels for the first ``USAGE_METRICS_MAX_KEYS``
keys a process sees and model names for the first ``USAGE_METRICS_MAX_MODELS`` models; the rest share the label
``other``, so the series stay bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from jobs.errors import JobsUnavailable
from jobs.usage import HOUR_S, UsageRow, UsageStore

log = logging.getLogger(__name__)

OTHER = "other"


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry, max_keys: int, max_models: int) -> None:
        self._keys = _CappedLabels(max_keys)
        self._models = _CappedLabels(max_models)
        labels = ["key", "model"]
        self.requests = Counter("gateway_key_requests", "Requests by API key id (capped; the rest: other) and model.",
                                labels, registry=registry)
        self.rows = Counter("gateway_key_rows", "Rows predicted (prediction and job rows) by API key id and model.",
                            labels, registry=registry)
        self.model_seconds = Counter("gateway_key_model_seconds", "Workers' inference time by API key id and model.",
                                     labels, registry=registry)
        self._children: dict[tuple[str, str], tuple[Counter, Counter, Counter]] = {}

    def children(self, key_id: str, model: str) -> tuple[Counter, Counter, Counter]:
        found = self._children.get((key_id, model))
        if found is None:
            key_label, model_label = self._keys.label(key_id), self._models.label(model)
            found = (self.requests.labels(key_label, model_label), self.rows.labels(key_label, model_label),
                     self.model_seconds.labels(key_label, model_label))
            self._children[(key_id, model)] = found
        return found


class _CappedLabels:
    """The first ``most`` values seen are their own label; every later one is ``other``."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._named: set[str] = set()

    def label(self, value: str) -> str:
        if value not in self._named and len(self._named) < self._most:
            self._named.add(value)
        return value if value in self._named else OTHER


class UsageCounter:
    def __init__(self, store: UsageStore, metrics: UsageMetrics, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._cells: dict[tuple[str, str, int], list[float]] = {}  # -> [requests, rows, job rows, model ms]

    def count(self, key_id: str, model: str, rows: int, job_rows: int, model_ms: float) -> None:
        hour = int(self._clock()) // HOUR_S * HOUR_S
        cell = self._cells.get((key_id, model, hour))
        if cell is None:
            cell = self._cells[(key_id, model, hour)] = [0, 0, 0, 0.0]
        cell[0] += 1
        cell[1] += rows
        cell[2] += job_rows
        cell[3] += model_ms
        requests, predicted, seconds = self._metrics.children(key_id, model)
        requests.inc()
        if rows or job_rows:
            predicted.inc(rows + job_rows)
        if model_ms:
            seconds.inc(model_ms / 1000)

    async def flush(self) -> None:
        """Write the counted cells; the ones not written (the database failed) stay for the next flush."""
        cells, self._cells = self._cells, {}
        pending = list(cells.items())
        try:
            while pending:
                (key, model, hour), counts = pending[0]
                await self._store.add(UsageRow(key, model, hour, int(counts[0]), int(counts[1]), int(counts[2]),
                                               counts[3]))
                pending.pop(0)
        except (JobsUnavailable, OSError) as exc:
            log.warning("usage of %d cell(s) not written yet, kept for the next flush: %s", len(pending), exc)
            for cell, counts in pending:
                kept = self._cells.setdefault(cell, [0, 0, 0, 0.0])
                for index, value in enumerate(counts):
                    kept[index] += value
            raise

    async def run(self, flush_s: float) -> None:
        """Flush every ``flush_s`` until cancelled."""
        while True:
            await asyncio.sleep(flush_s)
            try:
                await self.flush()
            except (JobsUnavailable, OSError):
                continue
