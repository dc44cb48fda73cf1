"""The job records' database: PostgreSQL when DATABASE_URL is set, SQLite in JOBS_DIR otherwise.

One small adapter with three calls (``execute``, ``fetch``, ``fetchrow``) so the
SQL in :mod:`jobs.records` is written once: it uses PostgreSQL's ``$1``
placeholders, which SQLite reads as ``?1``. Both drivers are asyncio-native
(asyncpg, aiosqlite) so no call blocks the event loop. Each connects on first
use, so a gateway starts and serves predictions while the database comes up.

The schema is the project's own: ``MIGRATIONS`` are applied in order, once,
and ``schema_version`` remembers how far a database got. Two processes
starting together do not both migrate: PostgreSQL takes an advisory lock,
SQLite an immediate (write) transaction. Add a migration by appending to the
list; never edit one that has shipped.

Types are the ones both engines take: TEXT, INTEGER for flags and BIGINT,
times included (microseconds since 1970 UTC: exact, and they sort and compare
the same everywhere).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from jobs.errors import JobsUnavailable
from jobs.settings import JobsSettings

MIGRATIONS: list[str] = [
    # 1: one row per job, status and small payloads inline.
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        model_name TEXT,
        model_version TEXT,
        fingerprint TEXT NOT NULL,
        options TEXT NOT NULL,
        input_key TEXT,
        input_data TEXT,
        progress_done BIGINT NOT NULL DEFAULT 0,
        progress_total BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        error_code TEXT,
        error_message TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        updated_at BIGINT NOT NULL,
        result TEXT,
        result_key TEXT
    );
    CREATE INDEX jobs_newest ON jobs (created_at DESC, job_id DESC);
    CREATE INDEX jobs_status_newest ON jobs (status, created_at DESC, job_id DESC);
    CREATE INDEX jobs_owner_newest ON jobs (owner, created_at DESC, job_id DESC);
    """,
    # 2: what a job is bound to besides the model's name and version, and the model that computed its result.
    """
    ALTER TABLE jobs ADD COLUMN input_shape TEXT;
    ALTER TABLE jobs ADD COLUMN result_model_name TEXT;
    ALTER TABLE jobs ADD COLUMN result_model_version TEXT
    """,
    # 3: the runs of a job before it was retried (POST /jobs/{id}/retry): a JSON array, NULL for none.
    """
    ALTER TABLE jobs ADD COLUMN earlier_runs TEXT
    """,
]

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
_PLACEHOLDER = re.compile(r"\$(\d+)")


#: The switch to WAL takes an exclusive lock without waiting on SQLite's busy timeout, so processes and
#: threads opening the same fresh file at once (``make run``'s gateway and sidecars, two sidecars in one
#: test) take turns, for up to ~5 s, instead of failing with "database is locked".
WAL_TRIES, WAL_WAIT_S = 50, 0.1


def use_wal(db: sqlite3.Connection) -> None:
    """Switch a new file to WAL, taking turns with other openers (blocking: for a connection's own thread)."""
    for attempt in range(1, WAL_TRIES + 1):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_TRIES:
                raise
            time.sleep(WAL_WAIT_S)


class Database(Protocol):
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


def create_database(settings: JobsSettings) -> Database:
    if settings.database_url:
        return PostgresDatabase(settings.database_url, settings.database_pool_size)
    return SqliteDatabase(settings.jobs_dir / "jobs.sqlite3")


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


class _Lazy(abc.ABC):
    """Connects on first use, once, under a lock; a failure is a 503 and the next call tries again."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._ready = False

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                try:
                    await self._connect()
                except (OSError, asyncio.TimeoutError) as exc:
                    raise JobsUnavailable(f"the job database is unavailable: {exc!r}") from exc
                self._ready = True

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the connection(s) and bring the schema up to date."""


async def _keep_session(connection: Any) -> None:
    """What a connection needs on its way back to the pool besides the rollback asyncpg always does: nothing."""


class PostgresDatabase(_Lazy):
    def __init__(self, url: str, pool_size: int) -> None:
        super().__init__()
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None

    async def _connect(self) -> None:
        import asyncpg

        # No reset query when a connection goes back to the pool (asyncpg's default costs a round trip per
        # statement): these connections keep no session state, and an open transaction is still rolled back.
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, timeout=10,
                                         reset=_keep_session)
        try:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(4711001)")  # one migrator at a time
                await connection.execute(_VERSION_TABLE)
                done = await connection.fetchval("SELECT MAX(version) FROM schema_version") or 0
                for version, script in enumerate(MIGRATIONS[done:], start=done + 1):
                    for statement in _statements(script):
                        await connection.execute(statement)
                    await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def execute(self, sql: str, *args: Any) -> int:
        await self._ensure()
        answer: str = await self._run("execute", sql, args)
        return int(answer.rsplit(" ", 1)[-1]) if answer[-1:].isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        await self._ensure()
        return [dict(row) for row in await self._run("fetch", sql, args)]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        await self._ensure()
        row = await self._run("fetchrow", sql, args)
        return None if row is None else dict(row)

    async def _run(self, method: str, sql: str, args: Sequence[Any]) -> Any:
        import asyncpg

        try:
            return await getattr(self._pool, method)(sql, *args)
        except (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresConnectionError,
                asyncpg.exceptions.CannotConnectNowError) as exc:
            raise JobsUnavailable(f"the job database failed: {exc!r}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool, self._ready = None, False


class SqliteDatabase(_Lazy):
    """One connection per process (WAL, so the gateway and the local sidecars share the file).

    Calls take turns: a statement of one coroutine must not start while another's cursor is open on the same
    connection, or a write would try to upgrade a stale read transaction and fail at once with "locked".
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._db: Any = None
        self._turn = asyncio.Lock()

    async def _connect(self) -> None:
        import aiosqlite

        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
        try:
            await self._use_wal(db)
            await db.execute("PRAGMA synchronous=FULL")  # a 202 means the record is on disk
            await db.execute("BEGIN IMMEDIATE")
            await db.execute(_VERSION_TABLE)
            async with db.execute("SELECT MAX(version) FROM schema_version") as cursor:
                done = (await cursor.fetchone())[0] or 0
            for version, script in enumerate(MIGRATIONS[done:], start=done + 1):
                for statement in _statements(script):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.close()
            raise
        db.row_factory = aiosqlite.Row
        self._db = db

    @staticmethod
    async def _use_wal(db: Any) -> None:
        """Switch a new file to WAL, taking turns with other openers (see :func:`use_wal`)."""
        for attempt in range(1, WAL_TRIES + 1):
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == WAL_TRIES:
                    raise
                await asyncio.sleep(WAL_WAIT_S)

    async def execute(self, sql: str, *args: Any) -> int:
        await self._ensure()
        async with self._turn, self._failures():
            async with self._db.execute(_PLACEHOLDER.sub(r"?\1", sql), args) as cursor:
                return int(cursor.rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        await self._ensure()
        async with self._turn, self._failures():
            async with self._db.execute(_PLACEHOLDER.sub(r"?\1", sql), args) as cursor:
                return [dict(row) for row in await cursor.fetchall()]

    @contextlib.asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        """A locked or unwritable file is the database being unavailable (503), not a bug."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise JobsUnavailable(f"the job database failed: {exc}") from exc

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db, self._ready = None, False
