"""The objects of one job in the store, read and written by the gateway and the sidecars.

    jobs/<id>/request.json   the JobSpec; created once (create-if-absent claims the id)
    jobs/<id>/input.json     inline rows, as submitted
    jobs/<id>/status.json    JobStatus
    jobs/<id>/result.json    {"job_id", "task", "output"}
    jobs/<id>/cancel         present once a cancel was asked for

Status has one writer at a time: the gateway writes ``queued`` before it
publishes, then only the sidecar holding the message writes it. A cancel is
a separate object, so asking for one never races with a progress update.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from jobs.errors import JobNotFound
from jobs.schema import ErrorInfo, JobSpec, JobStatus, utc_now
from jobs.store import ArtifactStore, job_key

_JOB_ID = re.compile(r"[0-9a-f]{32}")


def check_job_id(job_id: str) -> str:
    """Ids are made by the gateway; anything else names no job (and no key)."""
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job {job_id!r}")
    return job_id


def new_status(spec: JobSpec, total: int | None) -> JobStatus:
    now = utc_now()
    return JobStatus(
        job_id=spec.job_id, task=spec.task, status="queued", progress={"done": 0, "total": total},
        created_at=now, updated_at=now,
        status_url=f"/jobs/{spec.job_id}", result_url=f"/jobs/{spec.job_id}/result", owner=spec.owner,
    )


class JobRecords:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    async def create_request(self, spec: JobSpec) -> JobSpec | None:
        """Claim the id with ``spec``; if it was taken, the spec already there."""
        if await self.store.put(job_key(spec.job_id, "request.json"), spec.model_dump_json().encode(), create=True):
            return None
        existing = await self.store.get(job_key(spec.job_id, "request.json"))
        return JobSpec.model_validate_json(existing) if existing else None

    async def put_input(self, job_id: str, body: bytes) -> str:
        key = job_key(job_id, "input.json")
        await self.store.put(key, body)
        return key

    async def status(self, job_id: str) -> JobStatus | None:
        data = await self.store.get(job_key(job_id, "status.json"))
        return JobStatus.model_validate_json(data) if data is not None else None

    async def save(self, current: JobStatus, /, **changes: Any) -> JobStatus:
        """Write ``current`` with ``changes`` applied and a fresh ``updated_at``."""
        status = JobStatus.model_validate({**current.model_dump(), **changes, "updated_at": utc_now()})
        await self.store.put(job_key(status.job_id, "status.json"), status.model_dump_json().encode())
        return status

    async def fail(self, status: JobStatus, code: str, message: str) -> JobStatus:
        return await self.save(status, status="failed", error=ErrorInfo(code=code, message=message),
                               finished_at=utc_now())

    async def request_cancel(self, job_id: str) -> None:
        await self.store.put(job_key(job_id, "cancel"), utc_now().isoformat().encode())

    async def cancel_requested(self, job_id: str) -> bool:
        return await self.store.size(job_key(job_id, "cancel")) is not None

    async def put_result(self, spec: JobSpec, output: Any) -> None:
        body = orjson.dumps({"job_id": spec.job_id, "task": spec.task, "output": output},
                            option=orjson.OPT_SERIALIZE_NUMPY)
        await self.store.put(job_key(spec.job_id, "result.json"), body)

    async def has_result(self, job_id: str) -> bool:
        return await self.store.size(job_key(job_id, "result.json")) is not None
