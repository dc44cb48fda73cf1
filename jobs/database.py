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

The database is a dependency with outages. Every error that says the database
is down, restarting, full or missing (not a mistake in our SQL) becomes
``JobsUnavailable``: a 503 with Retry-After at the gateway, a wait in the
sidecar. The client's message is short ("the job database is unavailable");
the error itself goes to the log, once per outage and then at most once a
minute. After such an error the adapter checks the schema again, under the
migration lock, before its next statement: a database restarted on an empty
data folder gets its tables back by itself, and a statement that met the
missing tables is answered 503 until then. Between outages a statement costs
what it always did: the check runs only after an error.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from jobs.errors import JobsUnavailable
from jobs.settings import JobsSettings

_JOB_COLUMNS_5 = (
    "ALTER TABLE jobs ADD COLUMN callback_url TEXT",
    "ALTER TABLE jobs ADD COLUMN callback_events TEXT",
    "ALTER TABLE jobs ADD COLUMN expires_at BIGINT",
)
#: One row per webhook: the job's state as the change left it (the body is built from it, so every delivery of
#: one webhook sends the same), and its delivery's progress.
_OUTBOX_5 = """
    CREATE TABLE IF NOT EXISTS job_webhooks (
        event_id {serial},
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        progress_done BIGINT NOT NULL,
        progress_total BIGINT,
        error_code TEXT,
        error_message TEXT,
        started_at BIGINT,
        finished_at BIGINT,
        updated_at BIGINT NOT NULL,
        result_model_name TEXT,
        result_model_version TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        deliveries INTEGER NOT NULL DEFAULT 0,
        last_status INTEGER,
        last_error TEXT,
        next_at BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until BIGINT,
        delivered_at BIGINT
    )
"""
_INDEXES_5 = (
    "CREATE INDEX IF NOT EXISTS job_webhooks_due ON job_webhooks (state, next_at)",
    "CREATE INDEX IF NOT EXISTS job_webhooks_of_job ON job_webhooks (job_id, event_id)",
    "CREATE INDEX jobs_queued_deadline ON jobs (expires_at) WHERE status = 'queued' AND expires_at IS NOT NULL",
    "CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS job_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until BIGINT NOT NULL)",
)
_WANTS_5 = "NEW.callback_url IS NOT NULL AND NEW.callback_events LIKE ('%,' || NEW.status || ',%')"
_OUTBOX_INSERT_5 = (
    "INSERT INTO job_webhooks (job_id, url, status, attempts, progress_done, progress_total, error_code, "
    "error_message, started_at, finished_at, updated_at, result_model_name, result_model_version, next_at) "
    "VALUES (NEW.job_id, NEW.callback_url, NEW.status, NEW.attempts, NEW.progress_done, NEW.progress_total, "
    "NEW.error_code, NEW.error_message, NEW.started_at, NEW.finished_at, NEW.updated_at, NEW.result_model_name, "
    "NEW.result_model_version, NEW.updated_at)"
)

#: A script of statements separated by ";", or, where the engines need different SQL (triggers), the list of
#: statements for each ("sqlite", "postgresql"), not split.
MIGRATIONS: list[str | dict[str, list[str]]] = [
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
    # 4: model versions (jobs.registry): the last number handed out per model, the committed versions, every
    # change of what a model serves (the newest row is the state), the promotions a train job asks for; and
    # whether a job promotes the version it makes. IF NOT EXISTS: a database that lost only the job tables
    # (restarted from an older copy) migrates again over the registry's.
    """
    CREATE TABLE IF NOT EXISTS model_version_numbers (
        model_name TEXT PRIMARY KEY,
        last INTEGER NOT NULL,
        claimed_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS model_versions (
        model_name TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at BIGINT NOT NULL,
        source TEXT NOT NULL,
        job_id TEXT,
        trained_from TEXT,
        manifest TEXT NOT NULL,
        PRIMARY KEY (model_name, version)
    );
    CREATE TABLE IF NOT EXISTS model_activations (
        model_name TEXT NOT NULL,
        generation BIGINT NOT NULL,
        at BIGINT NOT NULL,
        action TEXT NOT NULL,
        active INTEGER NOT NULL,
        canary INTEGER,
        canary_traffic INTEGER NOT NULL,
        loaded INTEGER NOT NULL,
        previous_active INTEGER,
        by_key TEXT,
        PRIMARY KEY (model_name, generation)
    );
    CREATE TABLE IF NOT EXISTS model_promotions (
        job_id TEXT PRIMARY KEY,
        model_name TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        requested_at BIGINT NOT NULL,
        taken_at BIGINT,
        finished_at BIGINT
    );
    CREATE INDEX IF NOT EXISTS model_promotions_pending ON model_promotions (state, requested_at, job_id);
    ALTER TABLE jobs ADD COLUMN promote INTEGER NOT NULL DEFAULT 0
    """,
    # 5: webhooks, deadlines, retention. A job's callback URL, the states it wants webhooks for (",a,b,": a LIKE
    # finds one in both engines) and its deadline; the outbox of webhooks (jobs.outbox), filled by a trigger in
    # the statement that changes a job's state, so no writer can change one and forget its webhook; leases that
    # let one process at a time do the deployment's housekeeping (jobs.housekeeping). IF NOT EXISTS where the
    # tables outlive a lost jobs table, as in 4.
    {
        "sqlite": [
            *_JOB_COLUMNS_5,
            _OUTBOX_5.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"),
            *_INDEXES_5,
            f"CREATE TRIGGER job_webhooks_on_insert AFTER INSERT ON jobs WHEN {_WANTS_5} "
            f"BEGIN {_OUTBOX_INSERT_5}; END",
            f"CREATE TRIGGER job_webhooks_on_update AFTER UPDATE OF status ON jobs "
            f"WHEN OLD.status <> NEW.status AND {_WANTS_5} BEGIN {_OUTBOX_INSERT_5}; END",
        ],
        "postgresql": [
            *_JOB_COLUMNS_5,
            _OUTBOX_5.format(serial="BIGSERIAL PRIMARY KEY"),
            *_INDEXES_5,
            "CREATE OR REPLACE FUNCTION job_webhook_event() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {_OUTBOX_INSERT_5}; RETURN NULL; END $$",
            "CREATE TRIGGER job_webhooks_on_insert AFTER INSERT ON jobs FOR EACH ROW "
            f"WHEN ({_WANTS_5}) EXECUTE FUNCTION job_webhook_event()",
            "CREATE TRIGGER job_webhooks_on_update AFTER UPDATE OF status ON jobs FOR EACH ROW "
            f"WHEN (OLD.status <> NEW.status AND {_WANTS_5}) EXECUTE FUNCTION job_webhook_event()",
        ],
    },
    # 6: API keys made at run time (jobs.usage: only their SHA-256 digests), and every key's usage per model per
    # hour, added to by each gateway's flush. IF NOT EXISTS, as in 4.
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        models TEXT,
        rate_limit_per_s DOUBLE PRECISION,
        rows_per_day BIGINT,
        rows_per_month BIGINT,
        job_rows_per_day BIGINT,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE IF NOT EXISTS key_usage (
        key_id TEXT NOT NULL,
        model_name TEXT NOT NULL,
        hour BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        rows BIGINT NOT NULL,
        job_rows BIGINT NOT NULL,
        model_ms DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, model_name, hour)
    );
    CREATE INDEX IF NOT EXISTS key_usage_hour ON key_usage (hour)
    """,
]

log = logging.getLogger(__name__)

#: What every client hears of an outage; the log has the error itself.
UNAVAILABLE = "the job database is unavailable"
#: While an outage lasts, its errors are logged at most this often.
LOG_EVERY_S = 60.0
#: Longest wait to connect, for a pooled connection and for the migration lock (PostgreSQL).
CONNECT_TIMEOUT_S = 10

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


def _statements(migration: str | dict[str, list[str]], engine: str) -> list[str]:
    if isinstance(migration, dict):
        return migration[engine]
    return [part.strip() for part in migration.split(";") if part.strip()]


class _Lazy(abc.ABC):
    """Connects on first use under a lock, and checks the schema again after an outage.

    A failed connect is a 503 and the next call tries again. Calls that waited on the lock while one
    connect failed get that failure at once instead of trying in turn (a server that does not answer
    would otherwise hold each for the connect timeout).
    """

    #: The errors of an outage; their subclasses that are mistakes of ours are told apart by :meth:`_describe`.
    _transient: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._ready = False
        self._connects = 0  # finished tries of _connect
        self._failure: JobsUnavailable | None = None  # the last try's, while it is the last
        self._down = False  # an outage was logged and its end was not
        self._logged_at = -LOG_EVERY_S

    async def _ensure(self) -> None:
        if self._ready:
            return
        connects = self._connects
        async with self._lock:
            if self._ready:
                return
            if self._connects != connects and self._failure is not None:  # one failed while this call waited
                raise JobsUnavailable(self._failure.message) from self._failure.__cause__
            self._failure = None
            try:
                await self._connect()
            except self._transient as exc:
                if (unavailable := self._outage(exc)) is None:
                    raise
                self._failure = unavailable
                raise unavailable from exc
            finally:
                self._connects += 1
            self._failure, self._ready = None, True
            if self._down:
                self._down, self._logged_at = False, -LOG_EVERY_S
                log.warning("the job database is available again")

    def _outage(self, error: BaseException) -> JobsUnavailable | None:
        """The 503 for ``error``, logged and with the schema to be checked again; None when it is a bug of ours."""
        message = self._describe(error)
        if message is None:
            return None
        self._ready = self._ready and not self._check_again(error)
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._down, self._logged_at = True, now
            log.warning("%s: %s: %s", message, type(error).__name__, str(error)[:1000])
        return JobsUnavailable(message)

    def _describe(self, error: BaseException) -> str | None:
        """What the client is told of ``error``; None for an error of ours that only looks like an outage."""
        return UNAVAILABLE

    def _check_again(self, error: BaseException) -> bool:
        """Whether the next call reconnects and checks the schema before its statement."""
        return True

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the connection(s) (or keep the open ones) and bring the schema up to date."""


async def _keep_session(connection: Any) -> None:
    """What a connection needs on its way back to the pool besides the rollback asyncpg always does: nothing."""


#: asyncpg's InterfaceErrors of a connection or pool that went away; its others are misuse (wrong arguments).
_GONE = ("closed", "closing", "cancelling")


def _postgres_outages() -> tuple[type[BaseException], ...]:
    from asyncpg import exceptions as pg

    return (
        OSError, asyncio.TimeoutError,
        pg.PostgresConnectionError,  # 08: connection lost, refused, does not exist
        pg.OperatorInterventionError,  # 57: shutting down, starting up, statement cancelled
        pg.InsufficientResourcesError,  # 53: too many connections, disk full, out of memory
        pg.PostgresSystemError,  # 58: the server's I/O
        pg.InvalidCatalogNameError,  # the database itself is missing
        pg.InvalidAuthorizationSpecificationError,  # the server refused the credentials
        pg.UndefinedTableError,  # the tables are missing: a database restarted empty
        pg.LockNotAvailableError,  # the migration lock, held past lock_timeout by another session
        pg.InterfaceError,  # only _GONE's: the pool is closing, the connection is closed
        pg.InternalClientError,  # asyncpg's state when the server went away mid-statement
    )


class PostgresDatabase(_Lazy):
    def __init__(self, url: str, pool_size: int) -> None:
        super().__init__()
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None
        self._transient = _postgres_outages()

    def _describe(self, error: BaseException) -> str | None:
        from asyncpg import exceptions as pg

        if isinstance(error, pg.InterfaceError) and not any(word in str(error) for word in _GONE):
            return None
        if isinstance(error, pg.InvalidCatalogNameError):
            return f"{UNAVAILABLE}: the database that DATABASE_URL names does not exist"
        if isinstance(error, pg.InvalidAuthorizationSpecificationError):
            return f"{UNAVAILABLE}: it refused the credentials in DATABASE_URL"
        if isinstance(error, pg.UndefinedTableError):
            return f"{UNAVAILABLE}: its tables are missing and are being created again"
        return UNAVAILABLE

    async def _connect(self) -> None:
        import asyncpg

        if self._pool is None:
            # No reset query when a connection goes back to the pool (asyncpg's default costs a round trip per
            # statement): these connections keep no session state, and an open transaction is still rolled back.
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size,
                                                   timeout=CONNECT_TIMEOUT_S,
                                                   reset=_keep_session)
        # The pool outlives an outage (asyncpg reconnects it); the schema may not have (a wiped data folder).
        # Bounded waits: a server that stops answering, or a stuck session holding the lock, is a 503, not a hang.
        async with self._pool.acquire(timeout=CONNECT_TIMEOUT_S) as connection, connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{CONNECT_TIMEOUT_S}s'")
            await connection.execute("SELECT pg_advisory_xact_lock(4711001)")  # one migrator at a time
            await connection.execute(_VERSION_TABLE)
            done = await connection.fetchval("SELECT MAX(version) FROM schema_version") or 0
            for version, script in enumerate(MIGRATIONS[done:], start=done + 1):
                for statement in _statements(script, "postgresql"):
                    await connection.execute(statement)
                await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

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
        pool = self._pool
        if pool is None:  # closed while this call waited
            raise JobsUnavailable(UNAVAILABLE)
        try:
            return await getattr(pool, method)(sql, *args)
        except self._transient as exc:
            if (unavailable := self._outage(exc)) is None:
                raise
            raise unavailable from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool, self._ready = self._pool, None, False
            await pool.close()


class SqliteDatabase(_Lazy):
    """One connection per process (WAL, so the gateway and the local sidecars share the file).

    Calls take turns: a statement of one coroutine must not start while another's cursor is open on the same
    connection, or a write would try to upgrade a stale read transaction and fail at once with "locked".
    """

    _transient = (OSError, asyncio.TimeoutError, sqlite3.OperationalError)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._db: Any = None
        self._turn = asyncio.Lock()

    def _describe(self, error: BaseException) -> str | None:
        if "no such table" in str(error):
            return f"{UNAVAILABLE}: its tables are missing and are being created again"
        if getattr(error, "sqlite_errorname", None) == "SQLITE_ERROR":  # Python 3.11+: our SQL (syntax, a column)
            return None
        return UNAVAILABLE

    def _check_again(self, error: BaseException) -> bool:
        # Only a missing table: reopening on "locked" would add to the contention it reports.
        return "no such table" in str(error)

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
                for statement in _statements(script, "sqlite"):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.close()
            raise
        db.row_factory = aiosqlite.Row
        old, self._db = self._db, db
        if old is not None:  # opened again because its tables went missing: the next statements use the new one
            async with self._turn:
                await old.close()

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
        """A locked, unwritable or unreadable file is the database being unavailable (503), not a bug."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if (unavailable := self._outage(exc)) is None:
                raise
            raise unavailable from exc

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db, self._ready = None, False
