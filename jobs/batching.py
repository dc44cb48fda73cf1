"""Calls that arrive together run together: one database statement for many jobs' reads or writes.

A gateway accepting hundreds of jobs and a sidecar running dozens at once
would otherwise send one statement per job, each its own round trip and (for
writes) its own commit, which is an fsync. A :class:`Batcher` runs at most
``calls`` batches at a time; items arriving meanwhile wait, and the next
batch takes all of them, up to ``max_items``. No timer: a lone call goes at
once (on the next turn of the event loop), and under load the batches grow by
themselves, as the worker calls of :mod:`jobs.coalesce` do.

Each caller gets its own item's result, or the batch's exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_items: int, calls: int) -> None:
        """``run(items)`` answers one result per item, in order."""
        self._run = run
        self.max_items = max_items
        self.calls = calls
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if not self._scheduled:  # items added in this turn of the loop go together
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        self._waiting = [(item, future) for item, future in self._waiting if not future.done()]  # callers gone
        while self._waiting and self._in_flight < self.calls:
            batch, self._waiting = self._waiting[:self.max_items], self._waiting[self.max_items:]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._start()
