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
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from jobs.database import Database
from jobs.errors import InvalidJob, JobNotFound
from jobs.schema import ErrorInfo, JobSpec, JobState, JobStatus, utc_now
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key

_JOB_ID = re.compile(r"[0-9a-f]{32}")
_NOT_FINISHED = "status NOT IN ('succeeded', 'failed', 'cancelled')"


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


def _moment(micros: int | None) -> datetime | None:
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


def _status(row: dict[str, Any]) -> JobStatus:
    error = None if row["error_code"] is None else ErrorInfo(code=row["error_code"], message=row["error_message"])
    job_id = row["job_id"]
    return JobStatus(
        job_id=job_id, task=row["task"], status=row["status"],
        progress={"done": row["progress_done"], "total": row["progress_total"]},
        attempts=row["attempts"], error=error, cancel_requested=bool(row["cancel_requested"]),
        created_at=_moment(row["created_at"]), started_at=_moment(row["started_at"]),
        finished_at=_moment(row["finished_at"]), updated_at=_moment(row["updated_at"]),
        status_url=f"/jobs/{job_id}", result_url=f"/jobs/{job_id}/result",
        model_name=row["model_name"], model_version=row["model_version"],
        input_shape=None if row["input_shape"] is None else orjson.loads(row["input_shape"]),
        result_model_name=row["result_model_name"], result_model_version=row["result_model_version"],
        owner=row["owner"], priority=row["priority"],
    )


def _text(value: Any) -> bytes | None:
    return None if value is None else value.encode() if isinstance(value, str) else bytes(value)


_STATUS_COLUMNS = (
    "job_id, task, status, progress_done, progress_total, attempts, error_code, error_message, "
    "cancel_requested, created_at, started_at, finished_at, updated_at, model_name, model_version, owner, priority, "
    "input_shape, result_model_name, result_model_version"
)


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

    async def create(self, job: NewJob) -> tuple[JobStatus, JobRecord | None]:
        """Insert ``job`` as queued: its status, and the record already there if its id was taken."""
        now = _micros(utc_now())
        spec = job.spec
        shape = None if job.input_shape is None else orjson.dumps(list(job.input_shape)).decode()
        status = _status({
            "job_id": spec.job_id, "task": spec.task, "status": "queued", "progress_done": 0,
            "progress_total": job.total, "attempts": 0, "error_code": None, "error_message": None,
            "cancel_requested": 0, "created_at": now, "started_at": None, "finished_at": None, "updated_at": now,
            "model_name": job.model_name, "model_version": job.model_version, "owner": job.owner,
            "priority": spec.priority, "input_shape": shape, "result_model_name": None, "result_model_version": None,
        })
        inserted = await self.db.execute(
            "INSERT INTO jobs (job_id, task, status, fingerprint, options, input_key, input_data, progress_total, "
            "owner, model_name, model_version, created_at, updated_at, priority, input_shape) "
            "VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13) "
            "ON CONFLICT (job_id) DO NOTHING",
            spec.job_id, spec.task, spec.fingerprint, orjson.dumps(spec.options).decode(), spec.input_key,
            None if job.input_data is None else job.input_data.decode(), job.total, job.owner, job.model_name,
            job.model_version, now, spec.priority, shape,
        )
        if inserted:
            return status, None
        existing = await self.get(spec.job_id)
        if existing is None:
            raise JobNotFound(f"job {spec.job_id} was taken and is gone")
        return status, existing

    async def requeue_unpublished(self, job_id: str) -> JobStatus | None:
        """A job whose first publish failed, queued again for a retried submission."""
        await self.db.execute(
            "UPDATE jobs SET status = 'queued', error_code = NULL, error_message = NULL, finished_at = NULL, "
            "updated_at = $2 WHERE job_id = $1 AND status = 'failed' AND error_code = 'not_queued'",
            job_id, _micros(utc_now()),
        )
        return await self.status(job_id)

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self.db.fetchrow(
            f"SELECT {_STATUS_COLUMNS}, fingerprint, options, input_key, input_data, result, result_key "
            "FROM jobs WHERE job_id = $1", job_id,
        )
        if row is None:
            return None
        spec = JobSpec(job_id=job_id, task=row["task"], input_key=row["input_key"],
                       options=orjson.loads(row["options"]), fingerprint=row["fingerprint"], priority=row["priority"])
        return JobRecord(_status(row), spec, _text(row["input_data"]), _text(row["result"]), row["result_key"])

    async def status(self, job_id: str) -> JobStatus | None:
        row = await self.db.fetchrow(f"SELECT {_STATUS_COLUMNS} FROM jobs WHERE job_id = $1", job_id)
        return None if row is None else _status(row)

    async def save(self, current: JobStatus, /, **changes: Any) -> JobStatus | None:
        """Write ``current`` with ``changes`` and a fresh ``updated_at``; None if the job finished meanwhile."""
        status = JobStatus.model_validate({**current.model_dump(), **changes, "updated_at": utc_now()})
        if not await self._write(status):
            return None
        return status

    async def _write(self, status: JobStatus, result: bytes | None = None, result_key: str | None = None) -> bool:
        error = status.error
        return bool(await self.db.execute(
            "UPDATE jobs SET status = $2, progress_done = $3, progress_total = $4, attempts = $5, error_code = $6, "
            "error_message = $7, started_at = $8, finished_at = $9, updated_at = $10, "
            "result = COALESCE($11, result), result_key = COALESCE($12, result_key), "
            "result_model_name = $13, result_model_version = $14 "
            f"WHERE job_id = $1 AND {_NOT_FINISHED}",
            status.job_id, status.status, status.progress.done, status.progress.total, status.attempts,
            None if error is None else error.code, None if error is None else error.message,
            _stamp(status.started_at), _stamp(status.finished_at), _stamp(status.updated_at),
            None if result is None else result.decode(), result_key, status.result_model_name,
            status.result_model_version,
        ))

    async def fail(self, status: JobStatus, code: str, message: str) -> JobStatus | None:
        return await self.save(status, status="failed", error=ErrorInfo(code=code, message=message),
                               finished_at=utc_now())

    async def succeed(self, status: JobStatus, spec: JobSpec, output: Any,
                      computed_by: tuple[str, str] | None = None) -> JobStatus | None:
        """The result and the succeeded state, in one write (the result via the store when large).

        ``computed_by``: the (name, version) of the model that computed ``output``, kept with the result.
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
        row = await self.db.fetchrow("SELECT cancel_requested FROM jobs WHERE job_id = $1", job_id)
        return row is not None and bool(row["cancel_requested"])

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
