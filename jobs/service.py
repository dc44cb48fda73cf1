"""Submit, list, read, cancel and retry jobs: what the gateway's job routes call.

The gateway never runs a job. A submission is validated completely first
(task, options, every row, the input object's place and size), so a bad one
gets 422 with nothing stored or queued. Then one database write (the record,
``queued``, small inline rows in it; large ones go to the store first) and
one confirmed publish, and only then 202. The broker and the database are
connected on first use, so the gateway starts and serves predictions while
they are still coming up.

A job is bound to a served model when it is accepted (name, version, and the
input shape its rows are checked against) and published to that model's
queue, which only sidecars of that model consume. It names its model
(``"model"``) or gets the gateway's default one; a name no worker serves is
422 naming the served ones. While no healthy worker of its model has reported
the model's metadata, ``POST /jobs`` is 503: there is nothing to check the rows
against.

``POST /jobs/batch`` takes many jobs at once (``submit_many``): all are checked
first, the new ones recorded in one statement and published together.

A failed job can be run again under its id (``retry``): its record goes back
to queued, its failed run kept in ``earlier_runs``, and it is published as a
submission is. A resubmission with its Idempotency-Key returns the failed job
as it is (only a job whose first publish failed is queued again that way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from common.json_errors import NON_FINITE_MESSAGE, has_non_finite_numbers
from jobs.broker import Broker, create_broker
from jobs.database import Database, create_database
from jobs.errors import (
    InvalidJob,
    JobAlreadyFinished,
    JobNotFailed,
    JobNotFinished,
    JobNotFound,
    JobsUnavailable,
    MalformedJob,
)
from jobs.metrics import JobsMetrics
from jobs.outbox import Outbox
from jobs.records import JobRecords, check_job_id, moment
from jobs.routing import ModelIdentity
from jobs.schema import BatchedJob, JobBatch, JobSpec, JobState, JobStatus, JobSubmission, validate
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key
from jobs.submission import PreparedJob, Submissions
from jobs.tasks import import_task_modules
from jobs.waiting import FinishedWatch

log = logging.getLogger(__name__)


#: The default model's metadata as its workers publish it (None while no worker has).
DefaultModel = Callable[[], dict[str, Any] | None]
#: Every served model's name -> its metadata (None while none of its healthy workers has published it).
ServedModels = Callable[[], Mapping[str, dict[str, Any] | None]]


def only_default(served_model: DefaultModel) -> ServedModels:
    """The served models of a gateway that knows of one model only: the default one, once reported."""
    def served() -> dict[str, dict[str, Any] | None]:
        metadata = served_model()
        return {} if metadata is None or "name" not in metadata else {str(metadata["name"]): metadata}

    return served


@dataclass
class Submitted:
    status: JobStatus
    replayed: bool  # an Idempotency-Key named a job that existed already


class JobService:
    def __init__(
        self, settings: JobsSettings, store: ArtifactStore, broker: Broker, database: Database, metrics: JobsMetrics,
        served_model: DefaultModel = lambda: None, served_models: ServedModels | None = None,
    ) -> None:
        self.settings = settings
        #: The model a job that names none is for.
        self.served_model = served_model
        #: The models a job may name.
        self.served_models = served_models or only_default(served_model)
        self.store = store
        self.database = database
        self.records = JobRecords(database, store, settings)
        self.submissions = Submissions(settings, store)
        self.outbox = Outbox(database)
        self.finished = FinishedWatch(self.records.finished_among, settings.job_result_poll_s)
        self.broker = broker
        self.metrics = metrics
        self._broker_started = False
        self._broker_lock = asyncio.Lock()
        self._publishing = asyncio.Semaphore(settings.job_publish_concurrency)
        import_task_modules(settings.job_task_modules)

    @classmethod
    def from_settings(
        cls, settings: JobsSettings, registry: CollectorRegistry,
        served_model: DefaultModel = lambda: None, served_models: ServedModels | None = None,
    ) -> JobService:
        store, broker = ArtifactStore.from_settings(settings), create_broker(settings)
        return cls(settings, store, broker, create_database(settings), JobsMetrics(registry), served_model,
                   served_models)

    async def close(self) -> None:
        await self.finished.close()
        if self._broker_started:
            await self.broker.close()
        await self.database.close()

    async def _publish(self, model: str, body: bytes, priority: int) -> None:
        """Queue one job, within JOB_PUBLISH_TIMEOUT_S: a broker that takes the bytes but never confirms them
        (RabbitMQ blocks publishing connections on a memory or disk alarm) must not hold the request forever.

        A publish cut off here may still be confirmed later. Its job is marked not_queued by then, so the
        sidecar that gets that message skips it as finished; a retry with the same Idempotency-Key queues it
        again, and a duplicate message of a job is already handled (jobs.sidecar).

        At most JOB_PUBLISH_CONCURRENCY publishes are in flight per process, and a publish's time starts once
        it is: a few large batches at once wait their turn instead of spending their timeout in line.
        """
        async with self._publishing, asyncio.timeout(self.settings.job_publish_timeout_s):
            async with self._broker_lock:
                if not self._broker_started:
                    await self.broker.start()
                    self._broker_started = True
            await self.broker.publish(model, body, priority, self.settings.job_priority_levels)

    async def submit(self, body: bytes, idempotency_key: str | None, owner: str | None = None) -> Submitted:
        submission = validate(JobSubmission, self._parse(body), "")
        metadata, model = self._served_identity(submission.model)
        prepared = await self.submissions.prepare(submission, idempotency_key, owner, metadata, model)
        await self.submissions.check_callbacks([submission], "")
        await self.submissions.store_input(prepared)
        job = prepared.job
        status, existing = await self.records.create(job)
        if existing is not None:
            if existing.spec.fingerprint != job.spec.fingerprint:
                raise InvalidJob("Idempotency-Key: already used for a different job")
            if not (existing.status.error and existing.status.error.code == "not_queued"):
                return Submitted(existing.status, replayed=True)
            # The first submission failed to publish: queue it again here, for the model it was bound to.
            status = await self.records.requeue_unpublished(job.spec.job_id) or status
        await self._queue(status, job.spec, status.model_name or model.name)
        return Submitted(status, replayed=False)

    async def submit_many(self, body: bytes, owner: str | None = None) -> list[Submitted]:
        """``POST /jobs/batch``: every job checked first (422 naming the first bad one, nothing stored), then
        the new ones recorded in one statement and published together (the broker confirms them as a pipeline,
        not one round trip each). A job whose publish failed is marked not_queued, as for ``submit``, and the
        request is 503: sent again with the same idempotency keys, the queued jobs are replayed and the others
        queued."""
        batch = validate(JobBatch, self._parse(body), "")
        if len(batch.jobs) > self.settings.job_batch_max:
            raise InvalidJob(f"jobs: {len(batch.jobs)} jobs; the limit is {self.settings.job_batch_max} "
                             "(JOB_BATCH_MAX)")
        identities: dict[str | None, tuple[dict[str, Any], ModelIdentity]] = {}  # each model looked up once
        submissions: list[BatchedJob] = []
        prepared: list[PreparedJob] = []
        for index, raw in enumerate(batch.jobs):
            try:
                submission = validate(BatchedJob, raw, "")
                submissions.append(submission)
                if submission.model not in identities:
                    identities[submission.model] = self._served_identity(submission.model, f"jobs[{index}]: ")
                metadata, model = identities[submission.model]
                prepared.append(await self.submissions.prepare(submission, submission.idempotency_key, owner,
                                                               metadata, model))
            except InvalidJob as exc:
                raise InvalidJob(f"jobs[{index}]: {exc.message}") from None
        await self.submissions.check_callbacks(submissions, "jobs[{index}].")
        await self._check_replays(submissions, prepared)
        for one in prepared:
            await self.submissions.store_input(one)
        created = await self.records.create_many([one.job for one in prepared])
        # Those whose idempotency key named a job recorded before (or earlier in this batch): read together.
        taken = [one.job.spec.job_id for one, status in zip(prepared, created, strict=True) if status is None]
        existing = dict(zip(taken, await asyncio.gather(*(self.records.status(job_id) for job_id in taken)),
                            strict=True))
        answers: list[Submitted] = []
        to_queue: list[tuple[JobStatus, JobSpec, str]] = []
        for one, status in zip(prepared, created, strict=True):
            spec = one.job.spec
            replayed = status is None
            if status is None:
                status = existing[spec.job_id]
                if status is None:
                    raise JobsUnavailable(f"job {spec.job_id} was taken and is gone")
                if status.error is not None and status.error.code == "not_queued":  # its first publish failed
                    status = await self.records.requeue_unpublished(spec.job_id) or status
                    replayed = False
            if not replayed:
                to_queue.append((status, spec, status.model_name or one.model.name))
            answers.append(Submitted(status, replayed))
        failures = await asyncio.gather(*(self._queue(*one) for one in to_queue), return_exceptions=True)
        for failure in failures:
            if isinstance(failure, BaseException):
                raise failure
        return answers

    async def _check_replays(self, submissions: list[BatchedJob], prepared: list[PreparedJob]) -> None:
        """422 naming the first job whose idempotency key already named a different job (read before anything
        is stored; a batch whose key names an earlier job of it is checked the same way)."""
        seen: dict[str, str] = {}
        for index, one in enumerate(prepared):
            spec = one.job.spec
            earlier = seen.setdefault(spec.job_id, spec.fingerprint)
            if earlier != spec.fingerprint:
                raise InvalidJob(f"jobs[{index}]: idempotency_key: already used for a different job of this batch")
        pairs = enumerate(zip(submissions, prepared, strict=True))
        keyed = [(index, one.job.spec) for index, (submission, one) in pairs if submission.idempotency_key is not None]
        records = await asyncio.gather(*(self.records.get(spec.job_id) for _, spec in keyed))
        for (index, spec), record in zip(keyed, records, strict=True):
            if record is not None and record.spec.fingerprint != spec.fingerprint:
                raise InvalidJob(f"jobs[{index}]: idempotency_key: already used for a different job")

    def _served_identity(self, name: str | None = None, where: str = "") -> tuple[dict[str, Any], ModelIdentity]:
        """The metadata and identity of the model a job is bound to: ``name``, or the default model when None.

        422 for a name no worker serves (naming those served); 503 while the model's metadata is not known
        (``where`` starts its message: a batch's ``jobs[i]: ``).
        """
        if name is None:
            metadata = self.served_model()
            if metadata is None:
                raise JobsUnavailable("no worker has reported its model yet, and a job is bound to the model it is "
                                      "checked against; try again once a worker is ready")
        else:
            served = self.served_models()
            if name not in served:
                known = ", ".join(repr(one) for one in sorted(served)) or "none yet"
                raise InvalidJob(f"model: no model {name!r} is served here; served: {known}")
            metadata = served[name]
            if metadata is None:
                raise JobsUnavailable(f"{where}no healthy worker of model {name!r} has reported its metadata, and a "
                                      "job is checked against it; try again once one is ready")
        try:
            return metadata, ModelIdentity.from_metadata(metadata)
        except (KeyError, TypeError, ValueError, IndexError):
            raise JobsUnavailable("the workers' model metadata names no model name, version or input shape; "
                                  "a job cannot be bound to it") from None

    async def _queue(self, status: JobStatus, spec: JobSpec, model_name: str) -> None:
        """Publish a job recorded as queued; if the broker does not take it, it is failed as ``not_queued`` (a
        retry or a resubmission with its Idempotency-Key queues it again) and the request is 503."""
        try:
            await self._publish(model_name, spec.model_dump_json().encode(), spec.priority)
        except Exception as exc:
            log.warning("publishing job %s failed: %r", spec.job_id, exc)  # an outage: one line per job, no traceback
            await self.records.fail(status, "not_queued",
                                    "the broker did not accept the job; retry it or submit it again")
            raise JobsUnavailable("the job broker is unavailable; try again") from exc
        self.metrics.count("queued")

    def _parse(self, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if has_non_finite_numbers(body):
                raise InvalidJob(NON_FINITE_MESSAGE) from None
            raise MalformedJob(f"body is not valid JSON: {exc}") from None

    async def status(self, job_id: str, owner: str | None = None) -> JobStatus:
        """A job's status; with API keys (``owner``), another key's job is not found."""
        status = await self.records.status(check_job_id(job_id))
        if status is None or (owner is not None and status.owner != owner):
            raise JobNotFound(f"no job {job_id!r}")
        return (await self._with_callbacks([status]))[0]

    async def _with_callbacks(self, statuses: list[JobStatus]) -> list[JobStatus]:
        """``statuses`` with how their newest webhook fared (one read for all)."""
        newest = await self.outbox.newest([status.job_id for status in statuses if status.callback is not None])
        answers = []
        for status in statuses:
            row = newest.get(status.job_id)
            if row is not None and status.callback is not None:
                callback = status.callback.model_copy(update={
                    "state": row["state"], "attempts": row["deliveries"], "last_status": row["last_status"],
                    "delivered_at": moment(row["delivered_at"])})
                status = status.model_copy(update={"callback": callback})
            answers.append(status)
        return answers

    async def list(
        self, *, status: JobState | None = None, task: str | None = None, model: str | None = None,
        owner: str | None = None, limit: int = 50, cursor: str | None = None,
    ) -> tuple[list[JobStatus], str | None]:
        """Newest first; the next page's cursor, None on the last page."""
        page, next_cursor = await self.records.list(status=status, task=task, model=model, owner=owner, limit=limit,
                                                    cursor=cursor)
        return await self._with_callbacks(page), next_cursor

    async def result(self, job_id: str, owner: str | None = None, wait_s: float = 0.0) -> bytes | str:
        """The result's JSON, or a presigned URL when it is large and the store can sign.

        With ``wait_s``, an unfinished job is waited for that long (at most JOB_RESULT_MAX_WAIT_S) first.
        """
        if wait_s > 0 and not (await self.status(job_id, owner)).finished:
            await self.finished.wait(job_id, min(wait_s, self.settings.job_result_max_wait_s))
        record = await self.records.get(check_job_id(job_id))
        if record is None or (owner is not None and record.status.owner != owner):
            raise JobNotFound(f"no job {job_id!r}")
        status = record.status
        if status.status != "succeeded":
            detail = f": {status.error.message}" if status.error else ""
            raise JobNotFinished(f"job {job_id} is {status.status}{detail}; it has no result")
        if record.result is not None:
            return record.result
        key = record.result_key or job_key(job_id, "result.json")
        if self.store.presigns and (await self.store.size(key) or 0) > self.settings.job_result_redirect_bytes:
            return await self.store.presign(key)
        data = await self.store.get(key)
        if data is None:
            raise JobsUnavailable(f"job {job_id} succeeded but its result cannot be read")
        return data

    async def retry(self, job_id: str, owner: str | None = None) -> JobStatus:
        """Queue a failed job again under its id, as a fresh run (attempts from 0); its failed run is kept in
        ``earlier_runs``. Only a failed job: a cancelled one was stopped on purpose, and two retries of one job
        race on a conditional write, so it is queued once and the other is 409."""
        record = await self.records.get(check_job_id(job_id))
        if record is None or (owner is not None and record.status.owner != owner):
            raise JobNotFound(f"no job {job_id!r}")
        failed = record.status
        if failed.status != "failed":
            raise JobNotFailed(f"job {job_id} is {failed.status}; only a failed job can be retried")
        model_name = failed.model_name or self._served_identity()[1].name
        queued = await self.records.retry(failed)
        if queued is None:
            raise JobNotFailed(f"job {job_id} was retried meanwhile; it is queued once")
        await self._queue(queued, record.spec.model_copy(update={"run": len(queued.earlier_runs)}), model_name)
        return queued

    async def cancel(self, job_id: str, owner: str | None = None) -> JobStatus:
        status = await self.status(job_id, owner)
        if status.status == "cancelled":
            return status
        if status.finished:
            raise JobAlreadyFinished(f"job {job_id} is {status.status} already")
        await self.records.request_cancel(job_id)
        self.metrics.count("cancel_requested")
        status = await self.status(job_id, owner)
        if status.finished and status.status != "cancelled":
            raise JobAlreadyFinished(f"job {job_id} is {status.status} already")
        return status
