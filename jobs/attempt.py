"""What one attempt at a job holds besides the job: its delivery, settled once, its progress, written seldom,
and the model versions that computed its rows.

All are the sidecar's (jobs.sidecar), kept apart so that its module is about running jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jobs.broker import Delivery
from jobs.errors import JobCancelled
from jobs.records import JobRecords
from jobs.schema import JobStatus, Progress

log = logging.getLogger("jobs.sidecar")
#: Progress is written at most this often; a cancel is looked for at every checkpoint.
PROGRESS_INTERVAL_S = 0.5
T = TypeVar("T")
Rows = list[dict[str, Any]]


class SettledOnce:
    """A delivery settled at most once: a job cancelled while it acks or hands back does not settle it again."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self.body = delivery.body
        self.attempt = delivery.attempt
        self._settled = False

    async def _settle(self, action: Callable[[], Awaitable[None]]) -> None:
        if not self._settled:
            self._settled = True
            await action()

    async def ack(self) -> None:
        await self._settle(self._delivery.ack)

    async def retry(self) -> None:
        await self._settle(self._delivery.retry)

    async def release(self) -> None:
        await self._settle(self._delivery.release)


class ProgressWriter:
    """A running job's status, written PROGRESS_INTERVAL_S after it started and then at most that often while
    its progress moves. A job that ends sooner, as most small ones do, is written once: from queued to its end.
    A status write per job start would cost the database a statement for every job; a job cancelled while
    still shown queued is cancelled at once by the gateway, and then this attempt's end is not written."""

    def __init__(self, records: JobRecords, status: JobStatus) -> None:
        self.records = records
        self.status = status  # as last written (before the first write: what it will be)
        self._progress = status.progress
        self._shown = False  # the record says running
        self._stopped = False
        self._writing: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(PROGRESS_INTERVAL_S, self._write_due)

    async def checkpoint(self, done: int, total: int) -> None:
        if done < total and await self.records.cancel_requested(self.status.job_id):
            raise JobCancelled(self.status.job_id)
        self._progress = Progress(done=done, total=total)

    async def stop(self) -> JobStatus:
        """No more writes (one in flight lands first): the status the attempt's last write starts from."""
        self._stopped = True
        self._timer.cancel()
        if self._writing is not None:
            await asyncio.shield(self._writing)
        return self.status.model_copy(update={"progress": self._progress})

    def _write_due(self) -> None:
        self._writing = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        if self._stopped:
            return
        if not self._shown or self._progress != self.status.progress:
            try:
                written = await self.records.save(self.status, progress=self._progress)
            except Exception as exc:  # the attempt's last write meets the outage, if it lasts
                log.warning("writing job %s's progress failed: %r", self.status.job_id, exc)
            else:
                if written is None:  # finished meanwhile: nothing more is written
                    return
                self.status, self._shown = written, True
        if not self._stopped:
            self._timer = asyncio.get_running_loop().call_later(PROGRESS_INTERVAL_S, self._write_due)


class ComputingVersions:
    """The versions of the job's model whose answers make up one attempt's result.

    A worker's version changes under running jobs (a hot swap; a canary answers some requests): that is not a
    model change, so the attempt goes on, and its record names every version that computed some of its rows.
    """

    def __init__(self, started_on: str) -> None:
        """``started_on``: the worker's version when the attempt started, named when no answer named one."""
        self._started_on = started_on
        self._seen: set[str] = set()

    def collecting(self, call: Callable[[Rows, str], Awaitable[tuple[T, str | None]]]
                   ) -> Callable[[Rows, str], Awaitable[T]]:
        """``call`` as a task calls it (its answers only), each answer's version noted here."""
        async def answers(rows: Rows, request_id: str) -> T:
            answer, version = await call(rows, request_id)
            if version is not None:
                self._seen.add(version)
            return answer

        return answers

    def describe(self) -> str:
        """The one version, or every version in ascending order, comma-separated: ``"3,4"``."""
        return ",".join(sorted(self._seen, key=_version_order)) or self._started_on


def _version_order(version: str) -> tuple[int, int, str]:
    """Numbered versions (the registry's) by number, before any other label, those by text."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
