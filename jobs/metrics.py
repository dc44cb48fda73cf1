"""``jobs_total{state}``: job state changes, counted where they happen.

The gateway counts ``queued`` (accepted) and ``cancel_requested``; each
sidecar counts ``running``, ``retried``, ``refused`` (a job for another
model), ``succeeded``, ``failed`` and ``cancelled`` on its own /metrics
(SIDECAR_METRICS_PORT). Processes that run the housekeeping (the sidecars)
count webhook tries by outcome and the finished jobs retention deleted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class JobsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.jobs = Counter("jobs", "Job state changes, by state.", ["state"], registry=registry)
        self.webhooks = Counter("jobs_webhooks", "Webhook tries, by outcome (delivered, retried, failed).",
                                ["outcome"], registry=registry)
        self.deleted = Counter("jobs_deleted", "Finished jobs deleted past JOB_RETENTION_S.", registry=registry)

    def count(self, state: str) -> None:
        self.jobs.labels(state).inc()

    def count_webhook(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()
