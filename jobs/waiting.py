"""Result requests that wait for their job: one database read per interval for all of them, not one each.

``GET /jobs/<id>/result?wait=<s>`` keeps the request open until the job
finishes. A client waiting on hundreds of jobs would otherwise poll each one,
a request and a read every time; here the gateway holds the waiting requests
and, every ``JOB_RESULT_POLL_S`` while any waits, reads which of their jobs
finished, ``DATABASE_BATCH_ROWS`` jobs per statement, and wakes those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from jobs.errors import JobsUnavailable

log = logging.getLogger(__name__)


class FinishedWatch:
    def __init__(self, finished: Callable[[list[str]], Awaitable[set[str]]], interval_s: float) -> None:
        """``finished(job_ids)``: those of ``job_ids`` that finished."""
        self._finished = finished
        self.interval_s = interval_s
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Return once ``job_id`` finished, or after ``timeout_s``."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, set()).add(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="finished-watch")
        try:
            await asyncio.wait([future], timeout=timeout_s)
        finally:
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiting[job_id]

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.interval_s)
            try:
                done = await self._finished(list(self._waiting))
            except JobsUnavailable as exc:  # the waiters answer from the record when their time is up
                log.warning("looking for finished jobs failed: %s", exc)
                continue
            except Exception:  # a bug here must not leave every waiter to its timeout from now on
                log.exception("looking for finished jobs failed")
                continue
            for job_id in done:
                for future in self._waiting.pop(job_id, ()):
                    if not future.done():
                        future.set_result(None)
