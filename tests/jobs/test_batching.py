"""jobs.batching: calls arriving together share one run; each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from jobs.batching import Batcher


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if -1 in items:
            raise ValueError("bad item")
        return [item * 10 for item in items]


async def test_a_lone_call_goes_alone_and_calls_of_one_turn_go_together() -> None:
    run = _Recorder()
    batcher = Batcher(run, max_items=64, calls=1)
    assert await batcher(1) == 10
    assert await asyncio.gather(*(batcher(n) for n in range(5))) == [0, 10, 20, 30, 40]
    assert run.batches == [[1], [0, 1, 2, 3, 4]]


async def test_calls_waiting_on_a_busy_batcher_go_in_the_next_batch_up_to_its_size() -> None:
    run = _Recorder()
    run.release.clear()
    batcher = Batcher(run, max_items=3, calls=1)
    first = asyncio.ensure_future(batcher(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    run.release.set()
    assert await first == 0 and await asyncio.gather(*rest) == [10, 20, 30, 40, 50]
    assert run.batches == [[0], [1, 2, 3], [4, 5]]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    batcher = Batcher(_Recorder(), max_items=64, calls=2)
    answers = await asyncio.gather(batcher(1), batcher(-1), return_exceptions=True)
    assert all(isinstance(answer, ValueError) for answer in answers)
    assert await batcher(2) == 20


async def test_a_caller_cancelled_while_waiting_is_left_out() -> None:
    run = _Recorder()
    run.release.clear()
    batcher = Batcher(run, max_items=64, calls=1)
    first = asyncio.ensure_future(batcher(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gone, kept = asyncio.ensure_future(batcher(1)), asyncio.ensure_future(batcher(2))
    await asyncio.sleep(0)
    gone.cancel()
    run.release.set()
    assert await first == 0 and await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert run.batches == [[0], [2]]
