"""The deployment's housekeeping, in one process at a time: expiring queued jobs past their deadline, and deleting
finished jobs past JOB_RETENTION_S.

Every sidecar runs this loop; each round, the one holding the ``housekeeping`` lease (a row of ``job_leases``,
taken for three rounds and renewed by its holder) does the work, the others only try for the lease. A holder that
dies loses it when it runs out. Both jobs are conditional writes, so even two holders at once (a lease that ran out
mid-round) would do no harm.

Deadlines: one statement moves queued jobs whose ``expires_at`` passed to ``expired`` (a sidecar that gets one
first expires it itself, see jobs.sidecar). Retention: up to JOB_RETENTION_BATCH finished jobs a round, oldest
first; their store objects (everything under ``jobs/<id>/``: inline-too-large inputs, results) are deleted first,
then their records and webhooks, conditional on the job still being finished (a failed job retried in that
moment keeps its record, though its stored input may be gone). An object an ``input_uri`` named is the
submitter's and is kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from jobs.database import Database
from jobs.dependencies import cancelling
from jobs.errors import JobsUnavailable
from jobs.metrics import JobsMetrics
from jobs.outbox import Outbox
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key
from jobs.webhooks import micros_now

log = logging.getLogger("jobs.housekeeping")
_FINISHED = "status IN ('succeeded', 'failed', 'cancelled', 'expired')"
EXPIRED_MESSAGE = "not started by its deadline (expires_at); it never ran"


def process_id() -> str:
    """Who holds a lease or a webhook claim: this process, told apart from a restarted one with the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Housekeeping:
    def __init__(self, settings: JobsSettings, database: Database, store: ArtifactStore, metrics: JobsMetrics,
                 owner: str) -> None:
        self.settings = settings
        self.db = database
        self.store = store
        self.metrics = metrics
        self.owner = owner
        self.outbox = Outbox(database)

    async def run(self) -> None:
        """A round every JOB_HOUSEKEEPING_S until cancelled; an outage skips rounds, never ends the loop."""
        while True:
            try:
                if await self.hold_lease():
                    await self.expire_overdue()
                    while await self.delete_expired_records() == self.settings.job_retention_batch:
                        pass  # a backlog: the next batch at once
            except JobsUnavailable as exc:
                log.warning("housekeeping skipped a round: %s", exc.message)
            except Exception:  # a bug or a store error here must not stop housekeeping for good
                if cancelling():
                    raise  # a cancel a driver turned into an error: stop, as asked
                log.exception("housekeeping round failed; trying again next round")
            await asyncio.sleep(self.settings.job_housekeeping_s)

    async def hold_lease(self) -> bool:
        """Take or renew the housekeeping lease; whether this process holds it."""
        now = micros_now()
        until = now + int(3 * self.settings.job_housekeeping_s * 1_000_000)
        rows = await self.db.fetch(
            "INSERT INTO job_leases (name, holder, until) VALUES ('housekeeping', $1, $2) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            "WHERE job_leases.until < $3 OR job_leases.holder = $1 RETURNING holder", self.owner, until, now,
        )
        return bool(rows)

    async def expire_overdue(self) -> int:
        """Queued jobs past their deadline end expired (never run); how many."""
        now = micros_now()
        changed = await self.db.execute(
            "UPDATE jobs SET status = 'expired', finished_at = $1, updated_at = $1, error_code = 'expired', "
            "error_message = $2 WHERE status = 'queued' AND expires_at IS NOT NULL AND expires_at <= $1",
            now, EXPIRED_MESSAGE,
        )
        if changed:
            self.metrics.jobs.labels("expired").inc(changed)
            log.info("%d queued job(s) expired", changed)
        return changed

    async def delete_expired_records(self) -> int:
        """One batch of finished jobs past JOB_RETENTION_S deleted, store objects first; how many were found."""
        cutoff = micros_now() - int(self.settings.job_retention_s * 1_000_000)
        rows = await self.db.fetch(
            f"SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 AND {_FINISHED} "
            "ORDER BY finished_at LIMIT $2", cutoff, self.settings.job_retention_batch,
        )
        job_ids = [row["job_id"] for row in rows]
        if not job_ids:
            return 0
        for job_id in job_ids:
            await self.store.delete_under(job_key(job_id, ""))
        marks = ", ".join(f"${n}" for n in range(2, len(job_ids) + 2))
        deleted = await self.db.fetch(
            f"DELETE FROM jobs WHERE job_id IN ({marks}) AND finished_at < $1 AND {_FINISHED} RETURNING job_id",
            cutoff, *job_ids,
        )
        await self.outbox.forget([row["job_id"] for row in deleted])
        self.metrics.deleted.inc(len(deleted))
        log.info("deleted %d finished job(s) past JOB_RETENTION_S", len(deleted))
        return len(job_ids)
