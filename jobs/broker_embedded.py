"""The embedded broker: one SQLite file in WAL mode, shared by the local processes.

Why hand-written: the libraries that keep a queue in SQLite did not fit. Some
delete a message when it is read (at-most-once: a crash loses the job), and
the ones with acknowledgements assume a single consumer process (re-opening
the queue hands every unacknowledged message out again, even those a live
sidecar holds) or need Python 3.12. None has leases with a visibility
timeout, delivery counts and a dead-letter queue across processes, which is
what RabbitMQ gives the other adapter. Those are a few SQL statements:

- a message is *leased* to one consumer: its ``visible_at`` moves into the
  future and it gets a fresh lease token; the holder's heartbeat keeps moving
  it, so a job that runs for minutes stays with its sidecar;
- if the holder dies the heartbeat stops, the lease expires, and the next
  claim delivers the message again, counting the delivery;
- a message claimed past ``max_deliveries`` moves to ``<queue>.dead``.

Each model name has its own queue (``jobs.routing.model_queue``): the
``queue`` column of a message.

``synchronous=FULL`` makes a commit durable before ``publish`` returns.
Publishes that arrive while one commit is in progress are committed together
in the next transaction (group commit): one fsync for many jobs; so are acks,
and a consumer claims as many waiting messages as its prefetch has room for
in one transaction.
Times are wall-clock seconds because leases are shared between processes
and must survive a restart of any of them. All SQLite work runs on one
thread per broker object, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from jobs.batching import Batcher
from jobs.database import use_wal
from jobs.dependencies import Outages
from jobs.routing import dead_queue, model_queue

T = TypeVar("T")
#: Most acks one transaction deletes.
ACKS_PER_COMMIT = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    lease TEXT,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at);
"""


class EmbeddedDelivery:
    def __init__(self, broker: EmbeddedBroker, message_id: int, lease: str, body: bytes, attempt: int,
                 settled: Callable[[], None]) -> None:
        self._broker = broker
        self._id = message_id
        self._lease = lease
        self._settled = settled
        self.body = body
        self.attempt = attempt

    async def _settle(self, action: Callable[[sqlite3.Connection, int, str], None]) -> None:
        self._broker.held.pop(self._lease, None)
        try:
            await self._broker.run(action, self._id, self._lease)
        finally:
            self._settled()

    async def ack(self) -> None:
        self._broker.held.pop(self._lease, None)
        try:
            await self._broker.acks((self._id, self._lease))
        finally:
            self._settled()

    async def retry(self) -> None:
        await self._settle(self._broker.requeue_or_kill)

    async def release(self) -> None:
        await self._settle(_release)


class EmbeddedBroker:
    def __init__(self, path: Path, queue: str, *, max_deliveries: int, visibility_timeout_s: float,
                 poll_interval_s: float) -> None:
        self.path = path
        #: The queues' common prefix (JOB_QUEUE).
        self.queue = queue
        self.max_deliveries = max_deliveries
        self.visibility_timeout_s = visibility_timeout_s
        self.poll_interval_s = poll_interval_s
        self.held: dict[str, int] = {}  # lease token -> message id, renewed by the heartbeat
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._publishing: list[tuple[str, bytes, int, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        #: Acks arriving while one commit is in progress go together in the next (one fsync for many jobs).
        self.acks: Batcher[tuple[int, str], None] = Batcher(self._ack_many, ACKS_PER_COMMIT, 1)

    def watch(self, outages: Outages) -> None:
        """A local file has no connection to lose: nothing to tell."""

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embedded-broker")
        await self.run(lambda db: None)  # opens the database on the broker's thread
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="embedded-broker-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._executor is not None:
            await self.run(lambda db: db.close())
            self._executor.shutdown()
            self._executor, self._db = None, None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` on the broker's thread."""
        if self._executor is None:
            raise RuntimeError("the embedded broker is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            use_wal(db)
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            if "priority" not in {column[1] for column in db.execute("PRAGMA table_info(messages)")}:
                db.execute("ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")  # an older file
            self._db = db
        return fn(self._db, *args)

    async def publish(self, model: str, body: bytes, priority: int = 0, levels: int = 1) -> None:
        done = asyncio.get_running_loop().create_future()
        self._publishing.append((model_queue(self.queue, model), body, priority, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_publishes())
        await done

    async def _commit_publishes(self) -> None:
        while self._publishing:
            batch, self._publishing = self._publishing, []
            try:
                await self.run(_insert, [(queue, body, priority) for queue, body, priority, _ in batch])
            except Exception as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def consume(self, model: str, prefetch: int, *, dead: bool = False) -> AsyncIterator[EmbeddedDelivery]:
        """Up to ``prefetch`` held at a time; as many as are free and waiting are claimed in one transaction."""
        queue = model_queue(self.queue, model)
        queue, limit = (dead_queue(queue), None) if dead else (queue, self.max_deliveries)
        free = prefetch
        settled = asyncio.Event()

        def release() -> None:
            nonlocal free
            free += 1
            settled.set()

        while True:
            if free == 0:
                settled.clear()
                await settled.wait()
                continue
            claimed = await self._claim_or_hand_back(queue, limit, free)
            if not claimed:
                await asyncio.sleep(self.poll_interval_s)
                continue
            for message_id, lease, body, attempt in claimed:
                free -= 1
                self.held[lease] = message_id
                yield EmbeddedDelivery(self, message_id, lease, body, attempt, release)

    async def _claim_or_hand_back(self, queue: str, limit: int | None, most: int) -> list[tuple[int, str, bytes, int]]:
        """Claim; a consumer stopped meanwhile hands the claimed messages straight back (uncounted)."""
        claim = asyncio.ensure_future(self.run(self._claim, queue, limit, most))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            claimed = await claim
            for message_id, lease, _, _ in claimed:
                await self.run(_release, message_id, lease)
            raise

    def _claim(self, db: sqlite3.Connection, queue: str, limit: int | None,
               most: int) -> list[tuple[int, str, bytes, int]]:
        now = time.time()
        ready = ("SELECT id, body, deliveries FROM messages WHERE queue = ? AND visible_at <= ? "
                 "ORDER BY priority DESC, id LIMIT ?")
        if db.execute(ready, (queue, now, 1)).fetchone() is None:  # idle: no write lock taken
            return []
        claimed: list[tuple[int, str, bytes, int]] = []
        with _transaction(db):
            while len(claimed) < most and (rows := db.execute(ready, (queue, now, most - len(claimed))).fetchall()):
                for message_id, body, deliveries in rows:
                    if limit is not None and deliveries >= limit:  # its holders kept dying: give up
                        _kill(db, message_id, dead_queue(queue))
                        continue
                    lease = uuid.uuid4().hex
                    db.execute(
                        "UPDATE messages SET deliveries = deliveries + 1, visible_at = ?, lease = ? WHERE id = ?",
                        (now + self.visibility_timeout_s, lease, message_id),
                    )
                    claimed.append((message_id, lease, bytes(body), deliveries + 1))
        return claimed

    async def _ack_many(self, acks: list[tuple[int, str]]) -> list[None]:
        await self.run(_ack, acks)
        return [None] * len(acks)

    def requeue_or_kill(self, db: sqlite3.Connection, message_id: int, lease: str) -> None:
        with _transaction(db):
            query = "SELECT deliveries, queue FROM messages WHERE id = ? AND lease = ?"
            row = db.execute(query, (message_id, lease)).fetchone()
            if row is None:
                return  # the lease expired and someone else holds the message now
            if row[0] >= self.max_deliveries:
                _kill(db, message_id, dead_queue(row[1]))
            else:
                db.execute("UPDATE messages SET visible_at = ?, lease = NULL WHERE id = ?", (time.time(), message_id))

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.visibility_timeout_s / 3)
            if self.held:
                await self.run(_renew, list(self.held.items()), time.time() + self.visibility_timeout_s)

    async def count(self, model: str, *, dead: bool = False) -> int:
        """Messages in the queue of ``model``, held ones included."""
        queue = model_queue(self.queue, model)
        queue = dead_queue(queue) if dead else queue
        query = "SELECT COUNT(*) FROM messages WHERE queue = ?"
        return await self.run(lambda db: db.execute(query, (queue,)).fetchone()[0])


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection):  # type: ignore[no-untyped-def]
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _insert(db: sqlite3.Connection, messages: list[tuple[str, bytes, int]]) -> None:
    now = time.time()
    with _transaction(db):
        db.executemany("INSERT INTO messages (queue, body, visible_at, priority) VALUES (?, ?, ?, ?)",
                       [(queue, body, now, priority) for queue, body, priority in messages])


def _kill(db: sqlite3.Connection, message_id: int, dead: str) -> None:
    db.execute(
        "UPDATE messages SET queue = ?, deliveries = 0, visible_at = 0, lease = NULL WHERE id = ?",
        (dead, message_id),
    )


def _ack(db: sqlite3.Connection, acks: list[tuple[int, str]]) -> None:
    """Delete acked messages (those still leased to their acker: an expired lease's holder lost it)."""
    with _transaction(db):
        db.executemany("DELETE FROM messages WHERE id = ? AND lease = ?", acks)


def _release(db: sqlite3.Connection, message_id: int, lease: str) -> None:
    db.execute(
        "UPDATE messages SET visible_at = ?, lease = NULL, deliveries = deliveries - 1 WHERE id = ? AND lease = ?",
        (time.time(), message_id, lease),
    )


def _renew(db: sqlite3.Connection, leases: list[tuple[str, int]], visible_at: float) -> None:
    with _transaction(db):
        db.executemany(
            "UPDATE messages SET visible_at = ? WHERE id = ? AND lease = ?",
            [(visible_at, message_id, lease) for lease, message_id in leases],
        )
