"""The broker contract the gateway and the sidecars use, and the choice of adapter.

Two adapters keep the same promises:

- ``publish`` returns only once the broker holds the message durably
  (RabbitMQ: a publisher confirm of a persistent message on a durable quorum
  queue; embedded: a committed SQLite transaction);
- a consumed message stays owned by its consumer until ``ack``; if the
  consumer dies it is delivered again, and each delivery is counted;
- past ``JOB_MAX_DELIVERIES`` deliveries a message moves to the dead-letter
  queue, which ``consume(dead=True)`` reads.

Every call names the model its messages are for: each model name has its own
queue and dead-letter queue (``jobs.routing.model_queue``), so a sidecar that
consumes its worker's model never sees another model's jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from jobs.dependencies import Outages
from jobs.settings import JobsSettings


class Delivery(Protocol):
    body: bytes
    #: 1 on the first delivery, counting every redelivery (crashes included).
    attempt: int

    async def ack(self) -> None:
        """Done: the message is removed for good."""

    async def retry(self) -> None:
        """This attempt failed: deliver again, or dead-letter past the delivery limit."""

    async def release(self) -> None:
        """Hand the message back untouched (shutdown, an outage that is not the job's fault); the attempt need not
        count (the embedded broker does not count it; RabbitMQ 3.x does)."""


class Broker(Protocol):
    async def start(self) -> None:
        """Connect and declare the queues (idempotent); JobsUnavailable while the broker cannot be reached."""

    def watch(self, outages: Outages) -> None:
        """Tell ``outages`` when the connection to the broker is lost and when it is back (call before start)."""

    async def close(self) -> None: ...

    async def publish(self, model: str, body: bytes, priority: int = 0, levels: int = 1) -> None:
        """Return once the queue of ``model`` holds the message durably; ``priority`` (of ``levels``): higher first."""

    async def count(self, model: str, *, dead: bool = False) -> int:
        """Messages waiting in the queue of ``model`` (tests, the benchmark, operators)."""

    def consume(self, model: str, prefetch: int, *, dead: bool = False) -> AsyncIterator[Delivery]:
        """Yield deliveries of the queue of ``model``, at most ``prefetch`` unacknowledged at a time."""
        ...


def create_broker(settings: JobsSettings) -> Broker:
    if settings.amqp_url:
        from jobs.broker_amqp import AmqpBroker

        return AmqpBroker(settings.amqp_url, settings.job_queue, settings.job_max_deliveries)
    from jobs.broker_embedded import EmbeddedBroker

    return EmbeddedBroker(
        settings.jobs_dir / "broker.sqlite3",
        settings.job_queue,
        max_deliveries=settings.job_max_deliveries,
        visibility_timeout_s=settings.embedded_visibility_timeout_s,
        poll_interval_s=settings.embedded_poll_interval_s,
    )
