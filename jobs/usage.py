"""The database side of API keys made at run time and of every key's usage.

Keys: only the SHA-256 digest of a key is stored; the key itself is shown once, when it is made. A revoked key
keeps its row (``revoked_at``) so its usage still has a name. Usage: one row per key, model and hour, added to
by each gateway's flush (``add_usage``: an upsert that adds, so any number of gateways write the same rows).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from jobs.database import Database

HOUR_S = 3600


@dataclass(frozen=True)
class StoredKey:
    """A key's row: its limits (None: the gateway's default, or no quota) and the models it may use (None: all)."""

    key_id: str
    digest: str
    name: str
    admin: bool
    models: tuple[str, ...] | None
    rate_limit_per_s: float | None
    rows_per_day: int | None
    rows_per_month: int | None
    job_rows_per_day: int | None
    created_at: float
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        """The key as the admin API shows it: never its digest."""
        shown = asdict(self)
        del shown["digest"]
        shown["models"] = list(self.models) if self.models is not None else None
        return shown


@dataclass(frozen=True)
class UsageRow:
    key_id: str
    model_name: str
    hour: int  # seconds since 1970 UTC, a multiple of HOUR_S
    requests: int
    rows: int
    job_rows: int
    model_ms: float


def _key(row: dict[str, Any]) -> StoredKey:
    return StoredKey(
        key_id=row["key_id"], digest=row["digest"], name=row["name"], admin=bool(row["admin"]),
        models=tuple(json.loads(row["models"])) if row["models"] is not None else None,
        rate_limit_per_s=row["rate_limit_per_s"], rows_per_day=row["rows_per_day"],
        rows_per_month=row["rows_per_month"], job_rows_per_day=row["job_rows_per_day"],
        created_at=row["created_at"] / 1e6, revoked_at=row["revoked_at"] / 1e6 if row["revoked_at"] else None,
    )


class KeyStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, key: StoredKey) -> None:
        await self.database.execute(
            "INSERT INTO api_keys (key_id, digest, name, admin, models, rate_limit_per_s, rows_per_day, "
            "rows_per_month, job_rows_per_day, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            key.key_id, key.digest, key.name, int(key.admin),
            json.dumps(list(key.models)) if key.models is not None else None, key.rate_limit_per_s,
            key.rows_per_day, key.rows_per_month, key.job_rows_per_day, int(key.created_at * 1e6),
        )

    async def all(self) -> list[StoredKey]:
        """Every key, revoked ones included, oldest first."""
        rows = await self.database.fetch("SELECT * FROM api_keys ORDER BY created_at, key_id")
        return [_key(row) for row in rows]

    async def revoke(self, key_id: str) -> StoredKey | None:
        """Revoke ``key_id`` (again is a no-op); None when there is no such key."""
        await self.database.execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
            int(time.time() * 1e6), key_id,
        )
        row = await self.database.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        return _key(row) if row is not None else None


class UsageStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, row: UsageRow) -> None:
        """Add one cell's counts to its hour's row (made when missing)."""
        await self.database.execute(
            "INSERT INTO key_usage (key_id, model_name, hour, requests, rows, job_rows, model_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_id, model_name, hour) DO UPDATE SET "
            "requests = key_usage.requests + excluded.requests, rows = key_usage.rows + excluded.rows, "
            "job_rows = key_usage.job_rows + excluded.job_rows, model_ms = key_usage.model_ms + excluded.model_ms",
            row.key_id, row.model_name, row.hour, row.requests, row.rows, row.job_rows, row.model_ms,
        )

    async def between(self, since: int, until: int, key_id: str | None = None) -> list[UsageRow]:
        """The hours in [since, until) (seconds since 1970 UTC), of one key or of every key."""
        sql = "SELECT * FROM key_usage WHERE hour >= $1 AND hour < $2"
        args: list[Any] = [since, until]
        if key_id is not None:
            sql += " AND key_id = $3"
            args.append(key_id)
        rows = await self.database.fetch(sql + " ORDER BY hour, key_id, model_name", *args)
        return [UsageRow(**{**row, "model_ms": float(row["model_ms"])}) for row in rows]
