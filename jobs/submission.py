"""One submission checked and made into the job the gateway records: what ``POST /jobs`` and each job of
``POST /jobs/batch`` go through before anything is stored.

Everything that can refuse a job is checked here (task, options, rows, the input object, priority, promote,
callback URL, deadline, Idempotency-Key), so a batch is refused whole, naming its first bad job, with nothing
stored. The job's id comes from its Idempotency-Key (per owner) or is random; its fingerprint hashes what was
asked, to tell a replay from a reuse of the key.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson

from jobs.callback_urls import check_at_submit
from jobs.errors import InvalidJob
from jobs.records import NewJob
from jobs.routing import ModelIdentity
from jobs.schema import DEFAULT_CALLBACK_EVENTS, JobSpec, JobSubmission, utc_now, validate
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key
from jobs.tasks import TASKS, TaskType


@dataclass
class PreparedJob:
    job: NewJob
    #: The served model it is bound to (its queue).
    model: ModelIdentity
    #: Rows too large for the record, to be put in the store at ``job.spec.input_key`` once all is checked.
    large_input: bytes | None = None


class Submissions:
    def __init__(self, settings: JobsSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store

    async def prepare(self, submission: JobSubmission, idempotency_key: str | None, owner: str | None,
                      metadata: dict[str, Any], model: ModelIdentity) -> PreparedJob:
        """The job ``submission`` asks for, or InvalidJob naming the first bad field."""
        task = TASKS.get(submission.task)
        if task is None:
            raise InvalidJob(f"task: unknown task type {submission.task!r}; known: {', '.join(sorted(TASKS))}")
        options = validate(task.options, submission.options, "options")
        input_key, total = await self._check_inputs(task, submission)
        if not 0 <= submission.priority < self.settings.job_priority_levels:
            raise InvalidJob(f"priority: from 0 to {self.settings.job_priority_levels - 1}")
        if submission.promote and not task.promotes:
            raise InvalidJob(f"promote: task {task.name!r} makes no model version to promote")
        if task.check is not None:
            task.check(submission.inputs or [], submission.options, metadata)
        expires_at = self._deadline(submission)
        events = self._callback_events(submission)
        # Only what was asked for: the fingerprints of jobs without the newer fields stay what they were.
        asked = submission.model_dump(exclude_none=True, exclude={"idempotency_key"} | (
            set() if submission.promote else {"promote"}))
        fingerprint = hashlib.sha256(orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)).hexdigest()
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidJob("Idempotency-Key: 1 to 255 characters")
            # Per owner: two API keys using the same Idempotency-Key get two jobs.
            scope = "idempotency" if owner is None else f"idempotency:{owner}"
            job_id = hashlib.sha256(f"{scope}:{idempotency_key}".encode()).hexdigest()[:32]
        else:
            job_id = uuid.uuid4().hex
        input_data, large = None, None
        if submission.inputs is not None:
            input_data = orjson.dumps(submission.inputs)
            if len(input_data) > self.settings.job_inline_input_bytes:
                # Keyed by the fingerprint: a reused Idempotency-Key never overwrites the first job's rows.
                input_key = job_key(job_id, f"input-{fingerprint[:16]}.json")
                input_data, large = None, input_data
        spec = JobSpec(job_id=job_id, task=task.name, input_key=input_key, options=options.model_dump(),
                       fingerprint=fingerprint, priority=submission.priority, promote=submission.promote)
        job = NewJob(spec, total, input_data, owner, model.name, model.version, model.input_shape,
                     callback_url=submission.callback_url, callback_events=events, expires_at=expires_at)
        return PreparedJob(job, model, large)

    async def check_callbacks(self, submissions: Sequence[JobSubmission], field: str) -> None:
        """422 naming the first callback URL a webhook may not go to (resolved: after the cheaper checks)."""
        urls = [submission.callback_url for submission in submissions]
        first = next((index for index, url in enumerate(urls) if url is not None), None)
        if first is None:
            return
        if self.settings.webhook_secret is None:
            raise InvalidJob(f"{field.format(index=first)}callback_url: webhooks are off here (the gateway has no "
                             "WEBHOOK_SECRET to sign them with)")
        await check_at_submit(urls, self.settings.webhook_allow_private_networks, field,
                              self.settings.webhook_resolve_timeout_s, self.settings.webhook_check_deadline_s)

    async def store_input(self, prepared: PreparedJob) -> None:
        if prepared.large_input is not None and prepared.job.spec.input_key is not None:
            await self.store.put(prepared.job.spec.input_key, prepared.large_input)

    @staticmethod
    def _deadline(submission: JobSubmission) -> Any:
        if submission.deadline_s is not None and submission.expires_at is not None:
            raise InvalidJob("give either deadline_s or expires_at, not both")
        if submission.deadline_s is not None:
            return utc_now() + timedelta(seconds=submission.deadline_s)
        if submission.expires_at is not None:
            if submission.expires_at.tzinfo is None:
                raise InvalidJob("expires_at: give a time zone (e.g. 2030-01-01T00:00:00Z)")
            if submission.expires_at <= utc_now():
                raise InvalidJob("expires_at: already past")
        return submission.expires_at

    @staticmethod
    def _callback_events(submission: JobSubmission) -> tuple[str, ...]:
        if submission.callback_events is not None and submission.callback_url is None:
            raise InvalidJob("callback_events: give callback_url too")
        return tuple(dict.fromkeys(submission.callback_events or DEFAULT_CALLBACK_EVENTS))

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
