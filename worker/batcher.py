"""Dynamic batching: many callers' rows, one model call.

Callers ``await batcher.submit(rows)``; one loop task gathers queued rows into
batches of at most ``max_batch_size`` and runs ``infer`` on each in a single
thread, off the event loop. While a batch computes, new requests queue up, so
the next batch is naturally as large as the load: an idle batcher never waits
for company. Only when the previous batch held several requests (a sign of
concurrent load) does it wait up to ``timeout_s`` to fill the batch.

Each request names the :class:`Target` that computes its rows (a model
version's parameters, chosen per request): a batch holds rows of one target
only, so rows of two versions never share a model call, and a version swapped
in takes effect between two batches.

This module imports no JAX: ``infer`` is any function from an ``(n, ...)``
array to a dict of arrays with leading axis ``n``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from worker.errors import BatchFailed, QueueFull
from worker.metrics import WorkerMetrics

Outputs = Mapping[str, np.ndarray]
InferFn = Callable[[np.ndarray], Outputs]


@dataclass(frozen=True, eq=False)
class Target:
    """What computes a batch: the model call, and the version its metrics name. Compared by identity."""

    infer: InferFn
    version: str = ""


class _Pending:
    """One caller's rows and the future that gets their outputs (a plain slotted class: one per request)."""

    __slots__ = ("rows", "target", "future", "enqueued_at", "parts", "taken")

    def __init__(self, rows: np.ndarray, target: Target, future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        self.rows = rows
        self.target = target
        self.future = future
        self.enqueued_at = time.monotonic()
        # Outputs gathered so far when the rows span several batches.
        self.parts: list[Outputs] = []
        self.taken = 0


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        timeout_s: float,
        max_queue_rows: int,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._default_target = Target(infer)
        self._max_batch_size = max_batch_size
        self._timeout_s = timeout_s
        self._max_queue_rows = max_queue_rows
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        # One thread: the device runs one batch at a time, in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._task: asyncio.Task[None] | None = None
        self._computing: Target | None = None
        self._last_batch_requests = 0
        self._stopping = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def holds(self, target: Target) -> bool:
        """Whether rows for ``target`` wait or compute: what they compute with is still needed."""
        return self._computing is target or any(p.target is target and not p.future.done() for p in self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Refuse new rows, finish every queued request, then end the loop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, rows: np.ndarray, target: Target | None = None) -> dict[str, np.ndarray]:
        """Queue ``rows`` (leading batch axis) and wait for their outputs, in order.

        ``target``: what computes them; default: the ``infer`` the batcher was made with.
        """
        if self._stopping:
            raise QueueFull("the worker is shutting down")
        if self._queued_rows + len(rows) > self._max_queue_rows:
            raise QueueFull(f"batch queue holds {self._queued_rows} rows (limit {self._max_queue_rows})")
        pending = _Pending(rows, target or self._default_target, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += len(rows)
        self._wakeup.set()
        return await pending.future

    async def _run(self) -> None:
        while self._queue or not self._stopping:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._should_wait_for_more():
                await self._wait_for_rows(time.monotonic() + self._timeout_s)
            await self._run_one_batch()

    def _should_wait_for_more(self) -> bool:
        return (
            self._timeout_s > 0
            and self._last_batch_requests > 1
            and self._queued_rows < self._max_batch_size
        )

    async def _wait_for_rows(self, deadline: float) -> None:
        while self._queued_rows < self._max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> tuple[Target | None, list[tuple[_Pending, int, int]]]:
        """Slices ``(pending, start, stop)`` of at most ``max_batch_size`` rows of one target, FIFO.

        Requests of another target than the first one's keep their place at the head of the queue.
        """
        batch, room, target = [], self._max_batch_size, None
        passed: list[_Pending] = []
        while self._queue and room:
            pending = self._queue[0]
            if pending.future.done():  # its caller went away: skip what is left of it
                self._queue.popleft()
                self._queued_rows -= len(pending.rows) - pending.taken
                continue
            if target is None:
                target = pending.target
            elif pending.target is not target:
                passed.append(self._queue.popleft())
                continue
            start = pending.taken
            stop = min(len(pending.rows), start + room)
            batch.append((pending, start, stop))
            pending.taken = stop
            room -= stop - start
            self._queued_rows -= stop - start
            if stop == len(pending.rows):
                self._queue.popleft()
        self._queue.extendleft(reversed(passed))
        return target, batch

    async def _run_one_batch(self) -> None:
        target, batch = self._take_batch()
        if target is None or not batch:
            return
        self._last_batch_requests = len(batch)
        now = time.monotonic()
        rows = np.concatenate([p.rows[start:stop] for p, start, stop in batch])
        started = time.monotonic()
        self._computing = target
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, target.infer, rows)
            _check_lengths(outputs, len(rows))
        except Exception as exc:  # noqa: BLE001 - the error goes to each caller as data
            failure = BatchFailed(f"model call failed for a batch of {len(rows)} rows: {exc!r}")
            for pending, _, _ in batch:
                _fail(pending, failure)
            return
        finally:
            self._computing = None
            if self._metrics is not None:
                self._metrics.observe_batch(
                    size=len(rows),
                    compute_s=time.monotonic() - started,
                    waits_s=[now - p.enqueued_at for p, start, _ in batch if start == 0],
                    version=target.version,
                )
        offset = 0
        for pending, start, stop in batch:
            n = stop - start
            pending.parts.append({k: v[offset : offset + n] for k, v in outputs.items()})
            offset += n
            if stop == len(pending.rows) and not pending.future.done():
                pending.future.set_result(_join(pending.parts))


def _check_lengths(outputs: Outputs, n: int) -> None:
    for name, value in outputs.items():
        if len(value) != n:
            raise ValueError(f"output {name!r} has {len(value)} rows for {n} inputs")


def _fail(pending: _Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)


def _join(parts: list[Outputs]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
