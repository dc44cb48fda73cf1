"""The embedded broker's promises: leases, counted redelivery, dead-lettering, durability, a queue per model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs.broker_embedded import EmbeddedBroker, EmbeddedDelivery

MODEL = "a-model"


def make(path: Path, visibility_timeout_s: float = 0.3) -> EmbeddedBroker:
    return EmbeddedBroker(path / "broker.sqlite3", "jobs", max_deliveries=3,
                          visibility_timeout_s=visibility_timeout_s, poll_interval_s=0.01)


async def first(deliveries: AsyncIterator[EmbeddedDelivery], timeout_s: float = 5) -> EmbeddedDelivery:
    return await asyncio.wait_for(anext(deliveries), timeout_s)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    broker = make(tmp_path)
    await broker.start()
    yield broker
    await broker.close()


async def test_a_message_outlives_the_broker_object_that_published_it(tmp_path: Path) -> None:
    publisher = make(tmp_path)
    await publisher.start()
    await publisher.publish(MODEL, b"job-1")
    await publisher.close()
    consumer = make(tmp_path)
    await consumer.start()
    delivery = await first(consumer.consume(MODEL, 1))
    assert (delivery.body, delivery.attempt) == (b"job-1", 1)
    await delivery.ack()
    assert await consumer.count(MODEL) == 0
    await consumer.close()


async def test_a_dead_holder_s_message_is_delivered_again_and_counted(tmp_path: Path) -> None:
    holder = make(tmp_path)
    await holder.start()
    await holder.publish(MODEL, b"job")
    await first(holder.consume(MODEL, 1))
    await holder.close()  # dies holding it: no ack, no heartbeat
    other = make(tmp_path)
    await other.start()
    delivery = await first(other.consume(MODEL, 1))
    assert delivery.attempt == 2
    await other.close()


async def test_a_live_holder_keeps_its_message(broker: EmbeddedBroker) -> None:
    await broker.publish(MODEL, b"long job")
    held = await first(broker.consume(MODEL, 1))
    with pytest.raises(asyncio.TimeoutError):  # three visibility timeouts pass; the heartbeat renews
        await first(broker.consume(MODEL, 1), timeout_s=1.0)
    await held.ack()


async def test_release_does_not_count_and_retry_dead_letters_past_the_limit(broker: EmbeddedBroker) -> None:
    await broker.publish(MODEL, b"poison")
    deliveries = broker.consume(MODEL, 1)
    delivery = await first(deliveries)
    await delivery.release()
    attempts = []
    for _ in range(3):
        delivery = await first(deliveries)
        attempts.append(delivery.attempt)
        await delivery.retry()
    assert attempts == [1, 2, 3]
    assert await broker.count(MODEL) == 0 and await broker.count(MODEL, dead=True) == 1
    dead = await first(broker.consume(MODEL, 1, dead=True))
    assert dead.body == b"poison"
    await dead.ack()


async def test_prefetch_bounds_the_messages_held(broker: EmbeddedBroker) -> None:
    for i in range(3):
        await broker.publish(MODEL, b"%d" % i)
    deliveries = broker.consume(MODEL, 2)
    held = [await first(deliveries), await first(deliveries)]
    third = asyncio.ensure_future(anext(deliveries))
    await asyncio.sleep(0.2)
    assert not third.done()
    await held[0].ack()
    assert (await asyncio.wait_for(third, 5)).body == b"2"


async def test_each_model_has_its_own_queue_and_dead_letter_queue(broker: EmbeddedBroker) -> None:
    await broker.publish("iris", b"for iris")
    await broker.publish("mlp", b"for mlp")
    deliveries = broker.consume("mlp", 1)
    for _ in range(3):
        delivery = await first(deliveries)
        assert delivery.body == b"for mlp"
        await delivery.retry()
    with pytest.raises(asyncio.TimeoutError):  # the one left is iris's
        await first(deliveries, timeout_s=0.5)
    assert await broker.count("mlp") == 0 and await broker.count("mlp", dead=True) == 1
    assert await broker.count("iris") == 1 and await broker.count("iris", dead=True) == 0
    assert (await first(broker.consume("iris", 1))).body == b"for iris"


async def test_a_consumer_holds_at_most_its_prefetch_and_acks_commit_together(broker: EmbeddedBroker) -> None:
    await asyncio.gather(*(broker.publish(MODEL, f"job-{n}".encode()) for n in range(5)))
    deliveries = broker.consume(MODEL, 3)
    held = [await first(deliveries) for _ in range(3)]
    assert [delivery.body for delivery in held] == [b"job-0", b"job-1", b"job-2"]
    fourth = asyncio.ensure_future(anext(deliveries))
    await asyncio.sleep(0.2)
    assert not fourth.done()  # the prefetch is full
    await asyncio.gather(*(delivery.ack() for delivery in held))
    assert await broker.count(MODEL) == 2
    rest = [await asyncio.wait_for(fourth, 5), await first(deliveries)]
    assert sorted(delivery.body for delivery in rest) == [b"job-3", b"job-4"]
