"""The RabbitMQ adapter, through aio-pika.

Topology, declared by every process (declarations are idempotent), one pair
of queues per model name (``jobs.routing``), declared on its first use:

    jobs.<model>        durable quorum queue, x-delivery-limit, dead-letters to jobs.dlx
    jobs.dlx            direct exchange, shared by the models
    jobs.<model>.dead   durable quorum queue bound to jobs.dlx with the key jobs.<model>

Messages are persistent and published on a channel with publisher confirms
and ``mandatory``, so ``publish`` returns only once a queue holds the message.
A quorum queue counts every return of a message (a nack with requeue, or its
consumer's connection dropping) and dead-letters it past the delivery limit.
RabbitMQ refuses a declaration whose arguments differ from an existing
queue's: change JOB_MAX_DELIVERIES together with a new JOB_QUEUE. A job's
priority travels as the message priority, which quorum queues honour from
RabbitMQ 4.0 on (two levels; see ``amqp_priority``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from jobs.dependencies import Outages
from jobs.errors import JobsUnavailable
from jobs.routing import dead_queue, model_queue

#: Tries of a publish the broker nacks before giving up (503).
NACKED_PUBLISH_TRIES = 3


def amqp_priority(priority: int, levels: int) -> int:
    """The job's level on AMQP's 0..9: quorum queues (RabbitMQ 4.0+) serve 5 and above first.

    Only the top level is high: a quorum queue has two. RabbitMQ 3.x quorum queues ignore priorities.
    """
    return 9 if levels > 1 and priority == levels - 1 else 0


class AmqpDelivery:
    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        self.body = message.body
        # The quorum queue's count of earlier returns; absent on the first delivery.
        self.attempt = int((message.headers or {}).get("x-delivery-count", 0) or 0) + 1

    async def ack(self) -> None:
        await _settled(self._message.ack())

    async def retry(self) -> None:
        await _settled(self._message.nack(requeue=True))

    async def release(self) -> None:
        # RabbitMQ 3.x has no uncounted return: a release costs one delivery.
        await _settled(self._message.nack(requeue=True))


#: What settling a message meets once its channel went away with the broker (which then delivers it again).
_LOST_CHANNEL = (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.AMQPChannelError,
                 aiormq.exceptions.ChannelInvalidStateError, ConnectionError)
#: What connecting meets while the broker is down, booting or closing.
_UNREACHABLE = (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPConnectionError,
                aiormq.exceptions.AMQPChannelError)


async def _settled(settle: Awaitable[None]) -> None:
    """Settle a message; a broker gone meanwhile is an outage (JobsUnavailable), not a bug with a traceback."""
    try:
        await settle
    except _LOST_CHANNEL as exc:
        raise JobsUnavailable("the broker is unavailable") from exc


class AmqpBroker:
    def __init__(self, url: str, queue: str, max_deliveries: int) -> None:
        self.url = url
        #: The queues' common prefix (JOB_QUEUE).
        self.queue = queue
        self.exchange = f"{queue}.dlx"
        self.max_deliveries = max_deliveries
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._declared: set[str] = set()  # model queues declared by this process
        self._outages: Outages | None = None

    def watch(self, outages: Outages) -> None:
        self._outages = outages

    async def start(self) -> None:
        if self._connection is not None:
            return
        try:
            connection = await aio_pika.connect_robust(self.url)
        except _UNREACHABLE as exc:
            raise JobsUnavailable("the broker is unavailable") from exc
        try:
            self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await self._publisher.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        except BaseException as exc:
            await connection.close()
            if isinstance(exc, _UNREACHABLE):  # a node still booting, or closing: it let us in, then dropped us
                raise JobsUnavailable("the broker is unavailable") from exc
            raise
        if self._outages is not None:
            connection.close_callbacks.add(self._lost)
            connection.reconnect_callbacks.add(self._back)
        self._connection = connection

    def _lost(self, _connection: object, error: BaseException | None) -> None:
        """The robust connection dropped (it reconnects by itself); not a close of ours."""
        if self._outages is not None and error is not None and not isinstance(error, asyncio.CancelledError):
            self._outages.down("broker", error)

    def _back(self, _connection: object) -> None:
        if self._outages is not None:
            self._outages.up("broker")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._publisher = None
            self._declared.clear()

    def _channel(self) -> AbstractChannel:
        if self._publisher is None:
            raise RuntimeError("the AMQP broker is not started")
        return self._publisher

    async def _queue_of(self, model: str) -> str:
        """The model's queue, its dead-letter queue declared and bound beside it (once per process)."""
        queue = model_queue(self.queue, model)
        if queue in self._declared:
            return queue
        channel = self._channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_queue(dead_queue(queue), durable=True, arguments={"x-queue-type": "quorum"})
        await dead.bind(exchange, routing_key=queue)
        await channel.declare_queue(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # Returns allowed before dead-lettering: N deliveries are N - 1 returns.
                "x-delivery-limit": self.max_deliveries - 1,
                "x-dead-letter-exchange": self.exchange,
                "x-dead-letter-routing-key": queue,
            },
        )
        self._declared.add(queue)
        return queue

    async def publish(self, model: str, body: bytes, priority: int = 0, levels: int = 1) -> None:
        queue = await self._queue_of(model)
        message = aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json",
            priority=amqp_priority(priority, levels),
        )
        for attempt in range(1, NACKED_PUBLISH_TRIES + 1):
            try:
                await self._channel().default_exchange.publish(message, routing_key=queue, mandatory=True)
                return
            except aiormq.exceptions.DeliveryError as exc:
                # A nack: the queue could not take it, e.g. a quorum queue declared a moment ago whose
                # leader is still starting (RabbitMQ 3.x answers noproc then). Not queued, so try again; a
                # duplicate at worst, which a finished job's redelivery already handles.
                if attempt == NACKED_PUBLISH_TRIES or not isinstance(exc.frame, aiormq.spec.Basic.Nack):
                    raise
                await asyncio.sleep(0.05 * attempt)

    async def consume(self, model: str, prefetch: int, *, dead: bool = False) -> AsyncIterator[AmqpDelivery]:
        if self._connection is None:
            raise RuntimeError("the AMQP broker is not started")
        queue = await self._queue_of(model)
        # The channel outlives the iterator: deliveries still running when the consumer
        # stops must be acked on it. Closing the connection closes it.
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        source = await channel.get_queue(dead_queue(queue) if dead else queue)
        async with source.iterator() as messages:  # leaving it cancels the consumer
            async for message in messages:
                yield AmqpDelivery(message)

    async def count(self, model: str, *, dead: bool = False) -> int:
        queue = await self._queue_of(model)
        source = await self._channel().get_queue(dead_queue(queue) if dead else queue)
        result = await source.declare()  # passive: answers the message count
        return result.message_count or 0

    async def delete_queues(self, *models: str) -> None:
        """Remove the queues of ``models`` and the exchange (tests use a unique JOB_QUEUE per run)."""
        channel = self._channel()
        for model in models:
            queue = model_queue(self.queue, model)
            await channel.queue_delete(queue)
            await channel.queue_delete(dead_queue(queue))
            self._declared.discard(queue)
        await channel.exchange_delete(self.exchange)
