"""Submit, read, and cancel jobs: what the gateway's job routes call.

The gateway never runs a job. A submission is validated completely first
(task, options, every row, the input object's place and size), so a bad one
gets 422 with nothing stored or queued. Then: claim the id (request.json,
create-if-absent), store the inline rows, write ``queued``, publish, and only
then answer 202. The broker is connected on first use, so the gateway starts
and serves predictions while RabbitMQ is still coming up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from common.json_errors import NON_FINITE_MESSAGE, has_non_finite_numbers
from jobs.broker import Broker, create_broker
from jobs.errors import (
    InvalidJob,
    JobAlreadyFinished,
    JobNotFinished,
    JobNotFound,
    JobsUnavailable,
    MalformedJob,
)
from jobs.metrics import JobsMetrics
from jobs.records import JobRecords, check_job_id, new_status
from jobs.schema import JobSpec, JobStatus, JobSubmission, validate
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key
from jobs.tasks import TASKS, TaskType, import_task_modules

log = logging.getLogger(__name__)


@dataclass
class Submitted:
    status: JobStatus
    replayed: bool  # an Idempotency-Key named a job that existed already


class JobService:
    def __init__(
        self, settings: JobsSettings, store: ArtifactStore, broker: Broker, metrics: JobsMetrics,
        served_model: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.settings = settings
        #: The served model's metadata as its workers publish it (None while no worker has).
        self.served_model = served_model
        self.store = store
        self.records = JobRecords(store)
        self.broker = broker
        self.metrics = metrics
        self._broker_started = False
        self._broker_lock = asyncio.Lock()
        import_task_modules(settings.job_task_modules)

    @classmethod
    def from_settings(
        cls, settings: JobsSettings, registry: CollectorRegistry,
        served_model: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> JobService:
        store, broker = ArtifactStore.from_settings(settings), create_broker(settings)
        return cls(settings, store, broker, JobsMetrics(registry), served_model)

    async def close(self) -> None:
        if self._broker_started:
            await self.broker.close()

    async def _publish(self, body: bytes) -> None:
        async with self._broker_lock:
            if not self._broker_started:
                await self.broker.start()
                self._broker_started = True
        await self.broker.publish(body)

    async def submit(self, body: bytes, idempotency_key: str | None, owner: str | None = None) -> Submitted:
        submission = self._parse(body)
        task = TASKS.get(submission.task)
        if task is None:
            raise InvalidJob(f"task: unknown task type {submission.task!r}; known: {', '.join(sorted(TASKS))}")
        options = validate(task.options, submission.options, "options")
        input_key, total = await self._check_inputs(task, submission)
        metadata = self.served_model()
        if task.check is not None and metadata is not None:
            task.check(submission.inputs or [], submission.options, metadata)
        fingerprint = hashlib.sha256(
            orjson.dumps(submission.model_dump(exclude_none=True), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidJob("Idempotency-Key: 1 to 255 characters")
            # Per owner: two keys using the same Idempotency-Key get two jobs.
            scope = "idempotency" if owner is None else f"idempotency:{owner}"
            job_id = hashlib.sha256(f"{scope}:{idempotency_key}".encode()).hexdigest()[:32]
        else:
            job_id = uuid.uuid4().hex
        if submission.inputs is not None:
            input_key = job_key(job_id, "input.json")
        spec = JobSpec(job_id=job_id, task=task.name, input_key=input_key,
                       options=options.model_dump(), fingerprint=fingerprint, owner=owner)

        existing = await self.records.create_request(spec)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise InvalidJob("Idempotency-Key: already used for a different job")
            status = await self.records.status(job_id)
            if status is not None and not (status.error and status.error.code == "not_queued"):
                return Submitted(status, replayed=True)
            # The first submission stopped or failed before it published: finish it here.
        if submission.inputs is not None:
            await self.records.put_input(job_id, orjson.dumps(submission.inputs))
        status = await self.records.save(new_status(spec, total))
        try:
            await self._publish(spec.model_dump_json().encode())
        except Exception as exc:
            log.exception("publishing job %s failed", job_id)
            await self.records.fail(status, "not_queued", "the broker did not accept the job; submit it again")
            raise JobsUnavailable("the job broker is unavailable; try again") from exc
        self.metrics.count("queued")
        return Submitted(status, replayed=False)

    def _parse(self, body: bytes) -> JobSubmission:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if has_non_finite_numbers(body):
                raise InvalidJob(NON_FINITE_MESSAGE) from None
            raise MalformedJob(f"body is not valid JSON: {exc}") from None
        return validate(JobSubmission, data, "")

    async def _check_inputs(self, task: TaskType, submission: JobSubmission) -> tuple[str | None, int | None]:
        """The input object's key (input_uri) and the row count if known; 422 if the inputs are wrong."""
        if submission.inputs is not None and submission.input_uri is not None:
            raise InvalidJob("give either inputs or input_uri, not both")
        if submission.inputs is not None:
            rows = len(submission.inputs)
            if rows == 0 and task.inputs == "required":
                raise InvalidJob("inputs: at least one row")
            if rows > self.settings.job_max_rows:
                raise InvalidJob(f"inputs: {rows} rows; the limit is {self.settings.job_max_rows}")
            validate(list[task.row], submission.inputs, "inputs")  # type: ignore[name-defined]
            return None, rows
        if submission.input_uri is not None:
            key = self.store.key_for_uri(submission.input_uri)
            size = await self.store.size(key)
            if size is None:
                raise InvalidJob(f"input_uri: no object at {submission.input_uri}")
            if size > self.settings.job_max_input_bytes:
                raise InvalidJob(f"input_uri: {size} bytes; the limit is {self.settings.job_max_input_bytes}")
            return key, None
        if task.inputs == "required":
            raise InvalidJob(f"task {task.name!r} needs inputs or input_uri")
        return None, None

    async def status(self, job_id: str, owner: str | None = None) -> JobStatus:
        """A job's status; with an ``owner``, another owner's job is not found."""
        status = await self.records.status(check_job_id(job_id))
        if status is None or (owner is not None and status.owner != owner):
            raise JobNotFound(f"no job {job_id!r}")
        if not status.finished and await self.records.cancel_requested(job_id):
            # A queued job is cancelled for good: the sidecar that gets it will skip it.
            return status.model_copy(update={"status": "cancelled"} if status.status == "queued"
                                     else {"cancel_requested": True})
        return status

    async def result(self, job_id: str, owner: str | None = None) -> bytes | str:
        """The result's JSON, or a presigned URL when it is large and the store can sign."""
        status = await self.status(job_id, owner)
        if status.status != "succeeded":
            detail = f": {status.error.message}" if status.error else ""
            raise JobNotFinished(f"job {job_id} is {status.status}{detail}; it has no result")
        key = job_key(job_id, "result.json")
        if self.store.presigns and (await self.store.size(key) or 0) > self.settings.job_result_redirect_bytes:
            return await self.store.presign(key)
        data = await self.store.get(key)
        if data is None:
            raise JobsUnavailable(f"job {job_id} succeeded but its result cannot be read")
        return data

    async def cancel(self, job_id: str, owner: str | None = None) -> JobStatus:
        status = await self.status(job_id, owner)
        if status.status == "cancelled":
            return status
        if status.finished:
            raise JobAlreadyFinished(f"job {job_id} is {status.status} already")
        await self.records.request_cancel(job_id)
        self.metrics.count("cancel_requested")
        return await self.status(job_id, owner)
