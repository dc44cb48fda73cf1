"""Rows of concurrent jobs sent to the worker together: one /batch_predict call for many small jobs.

A sidecar runs many jobs at once; each one-row job calling its worker alone
would cost an HTTP round trip and a batch slot per row. Here the calls wait in
a queue while ``SIDECAR_WORKER_CALLS`` calls are in flight, and the next call
takes everything waiting, up to ``JOB_CHUNK_ROWS`` rows: no timer, so a lone
job pays no delay, and under load the batches grow by themselves.

Each job still gets exactly its own answers, in order, with the model version
that computed them: one call is one version's answer, so every job whose rows
rode in it was computed by that version. A batch the worker
refuses (4xx) is split in halves and each sent again, down to single jobs, so
the refusal reaches only the job with the bad row and the others stay
batched (a few extra calls, not one per job); a 5xx or a broken connection fails every job of the
batch, each retried as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from common.forwarder import UpstreamResponse
from jobs.batch_client import BatchPredictClient


class WorkerRefused(Exception):
    """The worker answered 4xx (not 408 / 429) for this job's rows: a retry would repeat it."""

    def __init__(self, answer: UpstreamResponse) -> None:
        super().__init__(f"the worker answered {answer.status}")
        self.answer = answer


class WorkerFailed(Exception):
    """The worker answered an error a retry may not repeat (5xx, 408, 429): the attempt is retried."""


#: Answers and the model version that computed them (None: the answer named none, nor did the check know one).
Versioned = tuple[list[Any], str | None]


@dataclass
class _Call:
    rows: list[dict[str, Any]]
    request_id: str
    answer: asyncio.Future[Versioned]


def refused(status: int) -> bool:
    """A 4xx a retry would repeat (not 408 / 429)."""
    return 400 <= status < 500 and status not in (408, 429)


class Coalescer:
    """Sends waiting jobs' rows to the worker at ``worker_url`` together; ``check_answer(headers)`` runs on
    every answer first (the sidecar's check of the model that computed it): it may raise, else it names the
    version that computed the answer."""

    def __init__(self, worker_url: str, api_key: str | None, timeout_s: float,
                 check_answer: Callable[[Mapping[str, str]], str | None], max_rows: int, calls: int) -> None:
        self._worker = BatchPredictClient(worker_url, api_key, timeout_s, calls)
        self._check_answer = check_answer
        self.max_rows = max_rows
        self._slots = asyncio.Semaphore(calls)
        self._waiting: list[_Call] = []
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def predict(self, rows: list[dict[str, Any]], request_id: str) -> Versioned:
        """The worker's answers to ``rows``, sent with other jobs' rows when they wait at the same time, and the
        version that computed them."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_waiting(), name="coalescer")
        call = _Call(rows, request_id, asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        self._wake.set()
        return await call.answer

    async def close(self) -> None:
        for task in [self._sender, *self._sending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._worker.aclose()

    async def _send_waiting(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._slots.acquire()
                batch = self._take()
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._send(batch))
                self._sending.add(task)
                task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._slots.release()

    def _take(self) -> list[_Call]:
        batch: list[_Call] = []
        rows = 0
        while self._waiting:
            call = self._waiting[0]
            if call.answer.done():  # its job was cancelled while waiting
                self._waiting.pop(0)
                continue
            if batch and rows + len(call.rows) > self.max_rows:
                break
            batch.append(self._waiting.pop(0))
            rows += len(call.rows)
        return batch

    async def _send(self, batch: list[_Call]) -> None:
        try:
            answer = await self._worker.send(orjson.dumps([row for call in batch for row in call.rows]),
                                             batch[0].request_id)
            version = self._check_answer(answer.headers)
            if refused(answer.status) and len(batch) > 1:
                half = len(batch) // 2
                await asyncio.gather(self._send(batch[:half]), self._send(batch[half:]))
                return
            if refused(answer.status):
                raise WorkerRefused(answer)
            if answer.status != 200:
                raise WorkerFailed(f"the worker answered {answer.status} to /batch_predict: {answer.body[:200]!r}")
            answers = orjson.loads(answer.body)
        except Exception as exc:
            for call in batch:
                if not call.answer.done():
                    call.answer.set_exception(exc)
            return
        start = 0
        for call in batch:
            if not call.answer.done():
                call.answer.set_result((answers[start:start + len(call.rows)], version))
            start += len(call.rows)
