"""The webhook outbox: one row per webhook, written by the database itself in the statement that changes a job's
state (migration 5's triggers), so a state change and its webhook are one transaction, whichever process wrote it.

Processes claim due rows with a lease (WEBHOOK_LEASE_S): a row is delivered by one process at a time, and a
process that dies holding it loses the lease, so another delivers it (at least once, never lost). Every write
that settles a row is conditional on still holding its lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.database import Database

_CLAIMED = (
    "event_id, job_id, url, status, attempts, progress_done, progress_total, error_code, error_message, started_at, "
    "finished_at, updated_at, result_model_name, result_model_version, deliveries, lease_until"
)
_DUE = "state = 'pending' AND next_at <= $3 AND (lease_until IS NULL OR lease_until < $3)"


@dataclass
class Webhook:
    """A claimed row: the job's state as the change left it, and the row's lease."""

    row: dict[str, Any]

    @property
    def event_id(self) -> int:
        return int(self.row["event_id"])

    @property
    def webhook_id(self) -> str:
        """The same on every delivery of this webhook, and never on another's."""
        return f"msg_{self.row['job_id']}_{self.event_id}"


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, owner: str, now: int, lease_until: int, limit: int) -> list[Webhook]:
        """Up to ``limit`` due webhooks, oldest due first, leased to ``owner`` until ``lease_until``."""
        rows = await self.db.fetch(
            f"UPDATE job_webhooks SET lease_owner = $1, lease_until = $2 WHERE event_id IN ("
            f"SELECT event_id FROM job_webhooks WHERE {_DUE} ORDER BY next_at LIMIT $4) AND {_DUE} "
            f"RETURNING {_CLAIMED}", owner, lease_until, now, limit,
        )
        return [Webhook(row) for row in sorted(rows, key=lambda row: row["event_id"])]

    async def settle(self, webhook: Webhook, owner: str, *, state: str, last_status: int | None,
                     last_error: str | None, next_at: int, delivered_at: int | None) -> None:
        """Record one try: ``state`` delivered, failed, or pending again from ``next_at``; the lease is let go."""
        await self.db.execute(
            "UPDATE job_webhooks SET state = $3, deliveries = deliveries + 1, last_status = $4, last_error = $5, "
            "next_at = $6, delivered_at = $7, lease_owner = NULL, lease_until = NULL "
            "WHERE event_id = $1 AND lease_owner = $2",
            webhook.event_id, owner, state, last_status, last_error, next_at, delivered_at,
        )

    async def put_back(self, webhook: Webhook, owner: str, next_at: int) -> None:
        """Let go of a claimed webhook untried (its receiver has as many in flight as it may): due at ``next_at``."""
        await self.db.execute(
            "UPDATE job_webhooks SET next_at = $3, lease_owner = NULL, lease_until = NULL "
            "WHERE event_id = $1 AND lease_owner = $2", webhook.event_id, owner, next_at,
        )

    async def newest(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each job's newest webhook row (its state, deliveries, last status, delivered time), for GET /jobs."""
        if not job_ids:
            return {}
        marks = ", ".join(f"${n}" for n in range(1, len(job_ids) + 1))
        rows = await self.db.fetch(
            "SELECT job_id, state, deliveries, last_status, delivered_at FROM job_webhooks "
            f"WHERE job_id IN ({marks}) ORDER BY event_id", *job_ids,
        )
        return {row["job_id"]: row for row in rows}  # the newest last, so it stays

    async def forget(self, job_ids: list[str]) -> None:
        """Drop the webhooks of deleted jobs."""
        if job_ids:
            marks = ", ".join(f"${n}" for n in range(1, len(job_ids) + 1))
            await self.db.execute(f"DELETE FROM job_webhooks WHERE job_id IN ({marks})", *job_ids)
