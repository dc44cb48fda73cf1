"""Job records: one row per job in the database (jobs.database), read and written by the gateway and the sidecars.

The row holds what was asked (task, options, fingerprint, owner, and the model
it was accepted for: name, version and the input shape its rows were checked
against), the status (state, progress, attempts, error,
timestamps), the name and version of the model that computed the result, and,
when small, the inline rows and the result. Large inputs and
results are objects in the store (``jobs/<id>/input-<fingerprint>.json``,
``jobs/<id>/result.json``); the store keeps artifacts, never status.

Writers never overwrite a finished job: every status write is conditional on
the job not being finished, so a queued job the gateway cancelled stays
cancelled even if a sidecar picks it up at the same moment. The gateway's
cancel of a running job only sets ``cancel_requested``, a column no status
write touches, so it never races with a progress update. The result and the
``succeeded`` state are one write: a job is never seen succeeded without it.
A retry of a failed job is one write conditional on the job being the failed
one that was read, so two retries at once queue it once.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson

from jobs.batching import Batcher
from jobs.database import Database
from jobs.errors import InvalidJob, JobNotFound
from jobs.schema import CallbackState, EarlierRun, ErrorInfo, JobSpec, JobState, JobStatus, utc_now
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key

_JOB_ID = re.compile(r"[0-9a-f]{32}")
_NOT_FINISHED = "status NOT IN ('succeeded', 'failed', 'cancelled', 'expired')"


def check_job_id(job_id: str) -> str:
    """Ids are made by the gateway; anything else names no job (and no key)."""
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job {job_id!r}")
    return job_id


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    """Times are stored as integer microseconds: exact both ways, so a cursor matches its row."""
    return (moment - _EPOCH) // _MICROSECOND


def _stamp(moment: datetime | None) -> int | None:
    return None if moment is None else _micros(moment)


def moment(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND


@dataclass
class JobRecord:
    status: JobStatus
    spec: JobSpec
    input_data: bytes | None  # inline rows (JSON), else spec.input_key names them in the store
    result: bytes | None  # the inline result body
    result_key: str | None  # or its key in the store


@dataclass
class NewJob:
    """What the gateway writes when it accepts a job."""

    spec: JobSpec
    total: int | None
    input_data: bytes | None = None
    owner: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    input_shape: tuple[int, ...] | None = None
    callback_url: str | None = None
    callback_events: tuple[str, ...] = ()
    expires_at: datetime | None = None


def _events(events: tuple[str, ...] | list[str]) -> str:
    """``",a,b,"``: the database's trigger finds a state in it with one LIKE in either engine."""
    return f",{','.join(events)},"


def _status(row: dict[str, Any]) -> JobStatus:
    error = None if row["error_code"] is None else ErrorInfo(code=row["error_code"], message=row["error_message"])
    job_id = row["job_id"]
    return JobStatus(
        job_id=job_id, task=row["task"], status=row["status"],
        progress={"done": row["progress_done"], "total": row["progress_total"]},
        attempts=row["attempts"], error=error, cancel_requested=bool(row["cancel_requested"]),
        created_at=moment(row["created_at"]), started_at=moment(row["started_at"]),
        finished_at=moment(row["finished_at"]), updated_at=moment(row["updated_at"]),
        status_url=f"/jobs/{job_id}", result_url=f"/jobs/{job_id}/result",
        model_name=row["model_name"], model_version=row["model_version"],
        input_shape=None if row["input_shape"] is None else orjson.loads(row["input_shape"]),
        result_model_name=row["result_model_name"], result_model_version=row["result_model_version"],
        owner=row["owner"], priority=row["priority"],
        earlier_runs=orjson.loads(row["earlier_runs"]) if row["earlier_runs"] else [],
        expires_at=moment(row["expires_at"]),
        callback=None if row["callback_url"] is None else CallbackState(
            url=row["callback_url"], events=row["callback_events"].strip(",").split(",")),
    )


def _new_status(job: NewJob, now: int) -> JobStatus:
    """The status of ``job`` as its insert at ``now`` records it."""
    spec = job.spec
    return _status({
        "job_id": spec.job_id, "task": spec.task, "status": "queued", "progress_done": 0,
        "progress_total": job.total, "attempts": 0, "error_code": None, "error_message": None,
        "cancel_requested": 0, "created_at": now, "started_at": None, "finished_at": None, "updated_at": now,
        "model_name": job.model_name, "model_version": job.model_version, "owner": job.owner,
        "priority": spec.priority, "input_shape": _shape(job),
        "result_model_name": None, "result_model_version": None, "earlier_runs": None,
        "expires_at": _stamp(job.expires_at), "callback_url": job.callback_url,
        "callback_events": _events(job.callback_events),
    })


def _text(value: Any) -> bytes | None:
    return None if value is None else value.encode() if isinstance(value, str) else bytes(value)


_STATUS_COLUMNS = (
    "job_id, task, status, progress_done, progress_total, attempts, error_code, error_message, "
    "cancel_requested, created_at, started_at, finished_at, updated_at, model_name, model_version, owner, priority, "
    "input_shape, result_model_name, result_model_version, earlier_runs, expires_at, callback_url, callback_events"
)
_RECORD_COLUMNS = f"{_STATUS_COLUMNS}, fingerprint, options, input_key, input_data, result, result_key, promote"
_INSERT_COLUMNS = (
    "job_id, task, status, fingerprint, options, input_key, input_data, progress_total, owner, model_name, "
    "model_version, created_at, updated_at, priority, input_shape, promote, callback_url, callback_events, expires_at"
)
_INSERT_WIDTH = _INSERT_COLUMNS.count(",") + 1
#: A status write's values, in the order of the VALUES rows of ``_write_many``, with the types PostgreSQL needs
#: to read parameters there (CAST reads the same in SQLite).
_WRITE_COLUMNS = (
    ("job_id", "TEXT"), ("status", "TEXT"), ("progress_done", "BIGINT"), ("progress_total", "BIGINT"),
    ("attempts", "INTEGER"), ("error_code", "TEXT"), ("error_message", "TEXT"), ("started_at", "BIGINT"),
    ("finished_at", "BIGINT"), ("updated_at", "BIGINT"), ("result", "TEXT"), ("result_key", "TEXT"),
    ("result_model_name", "TEXT"), ("result_model_version", "TEXT"),
)
_CASTS = tuple(kind for _, kind in _WRITE_COLUMNS)
#: Columns of a VALUES row are column1, column2, ... in both engines; a result is kept if the write has none.
_WRITE_SETS = ", ".join(
    f"{name} = COALESCE(v.column{n}, {name})" if name in ("result", "result_key") else f"{name} = v.column{n}"
    for n, (name, _) in enumerate(_WRITE_COLUMNS, start=1) if name != "job_id"
)
_T = TypeVar("_T")


def _padded(items: list[_T]) -> list[_T]:
    """``items`` with the last repeated up to a power of two: a batch statement has a few shapes only, each
    prepared once per connection (asyncpg caches prepared statements by their text)."""
    return items + [items[-1]] * ((1 << (len(items) - 1).bit_length()) - len(items))


def _placeholders(rows: int, columns: int, casts: tuple[str, ...] | None = None) -> str:
    """``($1, $2), ($3, $4)``: ``rows`` VALUES rows of ``columns`` parameters, each CAST when ``casts`` name types."""
    def one(n: int, column: int) -> str:
        return f"CAST(${n} AS {casts[column]})" if casts else f"${n}"

    return ", ".join(
        "(" + ", ".join(one(row * columns + column + 1, column) for column in range(columns)) + ")"
        for row in range(rows)
    )


def _unique_rounds(items: list[_T], key: Callable[[_T], str]) -> list[list[int]]:
    """Indexes of ``items`` in rounds without a repeated ``key``: two writes of one job never share a statement."""
    rounds: list[list[int]] = []
    keys: list[set[str]] = []
    for index, item in enumerate(items):
        k = key(item)
        free = next((n for n, taken in enumerate(keys) if k not in taken), len(keys))
        if free == len(keys):
            keys.append(set())
            rounds.append([])
        keys[free].add(k)
        rounds[free].append(index)
    return rounds


def _shape(job: NewJob) -> str | None:
    """The input shape ``job`` was accepted for, as the JSON the record keeps."""
    return None if job.input_shape is None else orjson.dumps(list(job.input_shape)).decode()


def _record(row: dict[str, Any]) -> JobRecord:
    spec = JobSpec(job_id=row["job_id"], task=row["task"], input_key=row["input_key"],
                   options=orjson.loads(row["options"]), fingerprint=row["fingerprint"], priority=row["priority"],
                   promote=bool(row["promote"]))
    return JobRecord(_status(row), spec, _text(row["input_data"]), _text(row["result"]), row["result_key"])


def encode_cursor(status: JobStatus) -> str:
    raw = f"{_micros(status.created_at)}:{status.job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, job_id = raw.split(":", 1)
        return int(micros), check_job_id(job_id)
    except (ValueError, UnicodeDecodeError, JobNotFound):
        raise InvalidJob("cursor: not a cursor this API returned") from None


class JobRecords:
    def __init__(self, db: Database, store: ArtifactStore, settings: JobsSettings) -> None:
        self.db = db
        self.store = store
        # A result the gateway would redirect to a presigned URL must be in the store.
        redirect = settings.job_result_redirect_bytes if store.presigns else settings.job_inline_result_bytes
        self.inline_result_bytes = min(settings.job_inline_result_bytes, redirect)
        # Concurrent reads and writes of many jobs share statements (jobs.batching).
        self.batch_rows = rows = settings.database_batch_rows
        calls = settings.database_batch_calls
        self._inserts: Batcher[tuple[NewJob, int], bool] = Batcher(self._insert_many, rows, calls)
        self._writes: Batcher[tuple[JobStatus, str | None, str | None], bool] = Batcher(self._write_many, rows, calls)
        self._statuses: Batcher[str, JobStatus | None] = Batcher(self._statuses_of, rows, calls)
        self._records: Batcher[str, JobRecord | None] = Batcher(self._records_of, rows, calls)

    async def create(self, job: NewJob) -> tuple[JobStatus, JobRecord | None]:
        """Insert ``job`` as queued: its status, and the record already there if its id was taken."""
        now = _micros(utc_now())
        inserted = await self._inserts((job, now))
        status = _new_status(job, now)
        if inserted:
            return status, None
        existing = await self.get(job.spec.job_id)
        if existing is None:
            raise JobNotFound(f"job {job.spec.job_id} was taken and is gone")
        return status, existing

    async def create_many(self, jobs: list[NewJob]) -> list[JobStatus | None]:
        """Insert ``jobs`` as queued in one statement (one transaction: all or none): each one's status, None for
        one whose id was taken (before, or earlier in ``jobs``)."""
        now = _micros(utc_now())
        inserted = await self._insert_many([(job, now) for job in jobs])
        return [_new_status(job, now) if new else None for job, new in zip(jobs, inserted, strict=True)]

    async def _insert_many(self, jobs: list[tuple[NewJob, int]]) -> list[bool]:
        """One INSERT for ``jobs`` (each with its creation time): whether each was new (an id taken before, or
        earlier in the batch, is not)."""
        padded = _padded(jobs)
        args: list[Any] = []
        for job, now in padded:
            spec = job.spec
            args += [spec.job_id, spec.task, "queued", spec.fingerprint, orjson.dumps(spec.options).decode(),
                     spec.input_key, None if job.input_data is None else job.input_data.decode(), job.total,
                     job.owner, job.model_name, job.model_version, now, now, spec.priority, _shape(job),
                     int(spec.promote), job.callback_url,
                     None if job.callback_url is None else _events(job.callback_events), _stamp(job.expires_at)]
        rows = await self.db.fetch(
            f"INSERT INTO jobs ({_INSERT_COLUMNS}) VALUES {_placeholders(len(padded), _INSERT_WIDTH)} "
            "ON CONFLICT (job_id) DO NOTHING RETURNING job_id", *args,
        )
        new = {row["job_id"] for row in rows}
        answers = []
        for job, _ in jobs:
            answers.append(job.spec.job_id in new)
            new.discard(job.spec.job_id)
        return answers

    async def requeue_unpublished(self, job_id: str) -> JobStatus | None:
        """A job whose first publish failed, queued again for a retried submission."""
        await self.db.execute(
            "UPDATE jobs SET status = 'queued', error_code = NULL, error_message = NULL, finished_at = NULL, "
            "updated_at = $2 WHERE job_id = $1 AND status = 'failed' AND error_code = 'not_queued'",
            job_id, _micros(utc_now()),
        )
        return await self.status(job_id)

    async def retry(self, failed: JobStatus) -> JobStatus | None:
        """``failed`` queued again as a fresh run, its last run added to ``earlier_runs``; None if the job
        changed since ``failed`` was read (another retry won: the job is queued once)."""
        runs = [*failed.earlier_runs, EarlierRun(attempts=failed.attempts, error=failed.error,
                                                 started_at=failed.started_at, finished_at=failed.finished_at)]
        changed = await self.db.execute(
            "UPDATE jobs SET status = 'queued', progress_done = 0, attempts = 0, error_code = NULL, "
            "error_message = NULL, cancel_requested = 0, started_at = NULL, finished_at = NULL, updated_at = $2, "
            "earlier_runs = $3 WHERE job_id = $1 AND status = 'failed' AND updated_at = $4",
            failed.job_id, _micros(utc_now()), orjson.dumps([run.model_dump(mode="json") for run in runs]).decode(),
            _micros(failed.updated_at),
        )
        return await self.status(failed.job_id) if changed else None

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._records(job_id)

    async def status(self, job_id: str) -> JobStatus | None:
        return await self._statuses(job_id)

    async def _records_of(self, job_ids: list[str]) -> list[JobRecord | None]:
        found = {row["job_id"]: _record(row) for row in await self._rows(_RECORD_COLUMNS, job_ids)}
        return [found.get(job_id) for job_id in job_ids]

    async def _statuses_of(self, job_ids: list[str]) -> list[JobStatus | None]:
        found = {row["job_id"]: _status(row) for row in await self._rows(_STATUS_COLUMNS, job_ids)}
        return [found.get(job_id) for job_id in job_ids]

    async def finished_among(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` that finished, ``DATABASE_BATCH_ROWS`` per statement."""
        done: set[str] = set()
        for start in range(0, len(job_ids), self.batch_rows):
            rows = await self._rows("job_id", job_ids[start:start + self.batch_rows], f"AND NOT {_NOT_FINISHED}")
            done.update(row["job_id"] for row in rows)
        return done

    async def _rows(self, columns: str, job_ids: list[str], condition: str = "") -> list[dict[str, Any]]:
        padded = _padded(job_ids)
        marks = ", ".join(f"${n}" for n in range(1, len(padded) + 1))
        return await self.db.fetch(f"SELECT {columns} FROM jobs WHERE job_id IN ({marks}) {condition}", *padded)

    async def save(self, current: JobStatus, /, **changes: Any) -> JobStatus | None:
        """Write ``current`` with ``changes`` and a fresh ``updated_at``; None if the job finished meanwhile."""
        status = JobStatus.model_validate({**current.model_dump(), **changes, "updated_at": utc_now()})
        if not await self._write(status):
            return None
        return status

    async def _write(self, status: JobStatus, result: bytes | None = None, result_key: str | None = None) -> bool:
        return await self._writes((status, None if result is None else result.decode(), result_key))

    async def _write_many(self, writes: list[tuple[JobStatus, str | None, str | None]]) -> list[bool]:
        """Each write applied unless its job finished: one UPDATE per round of distinct jobs (usually one)."""
        applied = [False] * len(writes)
        for indexes in _unique_rounds(writes, lambda write: write[0].job_id):
            batch = _padded([writes[index] for index in indexes])
            args: list[Any] = []
            for status, result, result_key in batch:
                error = status.error
                args += [status.job_id, status.status, status.progress.done, status.progress.total, status.attempts,
                         None if error is None else error.code, None if error is None else error.message,
                         _stamp(status.started_at), _stamp(status.finished_at), _stamp(status.updated_at),
                         result, result_key, status.result_model_name, status.result_model_version]
            rows = await self.db.fetch(
                f"UPDATE jobs SET {_WRITE_SETS} FROM (VALUES {_placeholders(len(batch), len(_WRITE_COLUMNS), _CASTS)}) "
                f"AS v WHERE jobs.job_id = v.column1 AND jobs.{_NOT_FINISHED} RETURNING job_id", *args,
            )
            done = {row["job_id"] for row in rows}
            for index in indexes:
                applied[index] = writes[index][0].job_id in done
        return applied

    async def fail(self, status: JobStatus, code: str, message: str) -> JobStatus | None:
        return await self.save(status, status="failed", error=ErrorInfo(code=code, message=message),
                               finished_at=utc_now())

    async def succeed(self, status: JobStatus, spec: JobSpec, output: Any,
                      computed_by: tuple[str, str] | None = None) -> JobStatus | None:
        """The result and the succeeded state, in one write (the result via the store when large).

        ``computed_by``: the (name, version) of the model that computed ``output``, kept with the result (and
        in its JSON); the version is several, comma-separated, when several computed its rows (jobs.attempt).
        """
        name, version = computed_by or (None, None)
        body = orjson.dumps({"job_id": spec.job_id, "task": spec.task, "model_name": name, "model_version": version,
                             "output": output}, option=orjson.OPT_SERIALIZE_NUMPY)
        now = utc_now()
        total = status.progress.total
        done = status.model_validate({
            **status.model_dump(), "status": "succeeded", "finished_at": now, "updated_at": now, "error": None,
            "progress": {"done": total if total is not None else status.progress.done, "total": total},
            "result_model_name": name, "result_model_version": version,
        })
        if len(body) <= self.inline_result_bytes:
            written = await self._write(done, result=body)
        else:
            key = job_key(spec.job_id, "result.json")
            await self.store.put(key, body)
            written = await self._write(done, result_key=key)
        return done if written else None

    async def request_cancel(self, job_id: str) -> None:
        """Cancel a queued job at once; ask a running one to stop (a finished one is left alone)."""
        await self.db.execute(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $2, "
            "finished_at = CASE WHEN status = 'queued' THEN $2 ELSE finished_at END, "
            "status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END "
            f"WHERE job_id = $1 AND {_NOT_FINISHED}",
            job_id, _micros(utc_now()),
        )

    async def cancel_requested(self, job_id: str) -> bool:
        status = await self.status(job_id)
        return status is not None and status.cancel_requested

    async def list(
        self, *, status: JobState | None = None, task: str | None = None, model: str | None = None,
        owner: str | None = None, limit: int = 50, cursor: str | None = None,
    ) -> tuple[list[JobStatus], str | None]:
        """Newest first, ``limit`` at a time; the cursor of the next page (None on the last)."""
        where, args = [], []
        for column, value in (("status", status), ("task", task), ("model_name", model), ("owner", owner)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if cursor is not None:
            micros, job_id = decode_cursor(cursor)
            args += [micros, job_id]
            a, b = len(args) - 1, len(args)
            where.append(f"(created_at < ${a} OR (created_at = ${a} AND job_id < ${b}))")
        args.append(limit + 1)
        rows = await self.db.fetch(
            f"SELECT {_STATUS_COLUMNS} FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} "
            f"ORDER BY created_at DESC, job_id DESC LIMIT ${len(args)}", *args,
        )
        page = [_status(row) for row in rows[:limit]]
        return page, encode_cursor(page[-1]) if len(rows) > limit else None
