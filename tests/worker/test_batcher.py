"""The batcher with a fake model that records the batch sizes it saw."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from worker.batcher import Batcher
from worker.errors import BatchFailed, QueueFull


class RecordingModel:
    """Doubles its input; can be held at a gate to let requests pile up."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        self.gate.wait(5)
        self.batch_sizes.append(len(rows))
        if self.fail:
            raise RuntimeError("boom")
        return {"y": rows * 2}


def make_batcher(model: RecordingModel, max_batch_size: int = 8, timeout_s: float = 0.0,
                 max_queue_rows: int = 1000) -> Batcher:
    batcher = Batcher(model, max_batch_size=max_batch_size, timeout_s=timeout_s, max_queue_rows=max_queue_rows)
    batcher.start()
    return batcher


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


async def test_each_caller_gets_its_own_rows_in_order() -> None:
    batcher = make_batcher(RecordingModel())
    results = await asyncio.gather(*(batcher.submit(rows(i, i + 0.5)) for i in range(5)))
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"].ravel(), [2 * i, 2 * i + 1])
    await batcher.stop()


async def test_requests_that_arrive_while_a_batch_computes_share_the_next_batch() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=8)
    model.gate.clear()
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)  # the first batch is now computing, held at the gate
    others = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(1, 6)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, *others)
    assert model.batch_sizes == [1, 5]
    await batcher.stop()


async def test_a_request_larger_than_the_max_is_split_not_refused() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4)
    big = np.arange(10, dtype=np.float32).reshape(-1, 1)
    result = await batcher.submit(big)
    np.testing.assert_array_equal(result["y"], big * 2)
    assert model.batch_sizes == [4, 4, 2]
    await batcher.stop()


async def test_batches_never_exceed_the_max() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=8)
    model.gate.clear()
    pending = [asyncio.ensure_future(batcher.submit(rows(*range(n)))) for n in (3, 7, 1, 5, 2)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(*pending)
    assert max(model.batch_sizes) <= 8
    assert sum(model.batch_sizes) == 18
    await batcher.stop()


async def test_a_failing_batch_fails_each_of_its_requests_with_a_clear_error() -> None:
    model = RecordingModel()
    batcher = make_batcher(model)
    model.fail = True
    outcomes = await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)), return_exceptions=True)
    assert all(isinstance(outcome, BatchFailed) for outcome in outcomes)
    assert "boom" in str(outcomes[0])
    model.fail = False
    assert (await batcher.submit(rows(3)))["y"].ravel().tolist() == [6]  # the loop survives
    await batcher.stop()


async def test_outputs_of_the_wrong_length_fail_the_batch() -> None:
    batcher = Batcher(lambda x: {"y": x[:1]}, max_batch_size=4, timeout_s=0, max_queue_rows=10)
    batcher.start()
    with pytest.raises(BatchFailed, match="rows for 3 inputs"):
        await batcher.submit(rows(1, 2, 3))
    await batcher.stop()


async def test_a_caller_that_goes_away_does_not_break_the_batch_for_others() -> None:
    model = RecordingModel()
    batcher = make_batcher(model)
    model.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    leaving = asyncio.ensure_future(batcher.submit(rows(1)))
    staying = asyncio.ensure_future(batcher.submit(rows(2)))
    await asyncio.sleep(0)
    leaving.cancel()
    model.gate.set()
    assert (await staying)["y"].ravel().tolist() == [4]
    await blocker
    assert model.batch_sizes == [1, 1]  # the cancelled request's row was skipped
    await batcher.stop()


async def test_a_full_queue_refuses_at_once() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=2, max_queue_rows=4)
    model.gate.clear()
    running = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(rows(1, 2, 3, 4)))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.submit(rows(5))
    model.gate.set()
    await asyncio.gather(running, queued)
    await batcher.stop()


async def test_stop_finishes_what_is_queued_then_refuses() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=2)
    model.gate.clear()
    pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(5)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await batcher.stop()
    assert [p.result()["y"].item() for p in pending] == [0, 2, 4, 6, 8]
    with pytest.raises(QueueFull, match="shutting down"):
        await batcher.submit(rows(1))


async def test_under_load_the_batcher_waits_briefly_to_fill_batches() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=8, timeout_s=0.2)
    model.gate.clear()
    first = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(2)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(*first)  # a batch of 2 requests: load is concurrent
    late = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(3)]
    await asyncio.sleep(0.02)
    later = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(5)]
    await asyncio.gather(*late, *later)
    assert model.batch_sizes[-1] == 8  # waited for the late arrivals instead of running 3
    await batcher.stop()
