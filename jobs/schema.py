"""The job API's request and status models, and the message a job travels as.

Free of JAX: the gateway imports it, and the OpenAPI document is built from it.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.rows import validation_message
from jobs.errors import InvalidJob

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "expired"})
#: The states a webhook is sent for unless callback_events names others: the final ones.
DEFAULT_CALLBACK_EVENTS: tuple[str, ...] = ("succeeded", "failed", "cancelled", "expired")

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def validate(annotation: Any, data: Any, prefix: str) -> Any:
    """``data`` as ``annotation``, or :class:`InvalidJob` naming the first bad field."""
    try:
        return _adapter(annotation).validate_python(data)
    except ValidationError as exc:
        raise InvalidJob(validation_message(exc, prefix)) from None


class JobSubmission(BaseModel):
    """Body of ``POST /jobs``: a task type and its rows, inline or in the store."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="Task type, e.g. batch_predict or train.")
    model: str | None = Field(
        None, min_length=1, description="The served model the job is for (GET /models lists them); default: the "
        "gateway's default model (DEFAULT_MODEL). Its rows are checked against that model's input and the job "
        "goes to that model's queue.",
    )
    inputs: list[Any] | None = Field(
        None, description="The rows, inline (for batch_predict the same objects as /batch_predict)."
    )
    input_uri: str | None = Field(
        None,
        description="Instead of inputs: a JSON array of rows already in the store, as s3://<bucket>/<key> "
        "(S3) or file://<path inside JOBS_DIR> (local store).",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the task type.")
    priority: int = Field(
        0, description="0 (the default, lowest) to JOB_PRIORITY_LEVELS - 1: a higher one overtakes queued lower ones."
    )
    promote: bool = Field(
        False, description="train only: activate the version the job makes once it succeeds (a gateway swaps every "
        "worker to it); the result says whether it did (\"promoted\").",
    )
    callback_url: str | None = Field(
        None, max_length=2048, description="http(s) URL the job's status is POSTed to (signed as Standard Webhooks "
        "says) when it reaches a state of callback_events.",
    )
    callback_events: list[JobState] | None = Field(
        None, min_length=1, description="The states that trigger a webhook; default: the final ones (succeeded, "
        "failed, cancelled, expired).",
    )
    deadline_s: float | None = Field(
        None, gt=0, description="Seconds from now: a job not started by then ends expired and never runs.",
    )
    expires_at: datetime | None = Field(
        None, description="Instead of deadline_s, the moment itself (ISO 8601 with a time zone).",
    )


class BatchedJob(JobSubmission):
    """One job of ``POST /jobs/batch``: a ``POST /jobs`` body, and the Idempotency-Key that request would send."""

    idempotency_key: str | None = Field(
        None, min_length=1, max_length=255, description="As the Idempotency-Key header of POST /jobs, for this job.",
    )


class JobBatch(BaseModel):
    """Body of ``POST /jobs/batch``."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[dict[str, Any]] = Field(min_length=1, description="POST /jobs bodies, each with an optional "
                                       "idempotency_key; at most JOB_BATCH_MAX.")


class JobBatchAccepted(BaseModel):
    job_ids: list[str] = Field(description="The jobs' ids, in the order of the request's jobs.")
    replayed: list[bool] = Field(description="For each: whether its idempotency_key named a job that existed.")


class CallbackState(BaseModel):
    """Where a job's webhooks go, and how the newest one fared."""

    url: str
    events: list[JobState]
    attempts: int = Field(0, description="Deliveries of the newest webhook so far.")
    last_status: int | None = Field(None, description="The receiver's HTTP status on the last try; null: no answer.")
    delivered_at: datetime | None = Field(None, description="When the newest webhook was accepted (2xx).")
    state: Literal["none", "pending", "delivered", "failed"] = Field(
        "none", description="The newest webhook's: none sent yet, pending (retrying), delivered, or failed (gave up "
        "after WEBHOOK_RETRY_S).",
    )


class Progress(BaseModel):
    done: int = Field(0, description="Units done (rows for batch_predict, NUTS iterations for train).")
    total: int | None = Field(None, description="Units in all; null until known.")


class ErrorInfo(BaseModel):
    code: str
    message: str


class EarlierRun(BaseModel):
    """A run of a job before ``POST /jobs/{id}/retry`` queued it again."""

    attempts: int = Field(description="Deliveries of that run.")
    error: ErrorInfo | None = Field(None, description="Why it failed.")
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobStatus(BaseModel):
    """A job's database record as ``GET /jobs/{id}`` answers it."""

    job_id: str
    task: str
    status: JobState
    progress: Progress = Field(default_factory=Progress)
    attempts: int = Field(0, description="Deliveries of the job to a sidecar so far.")
    error: ErrorInfo | None = Field(None, description="Why the job failed, or why the last attempt did.")
    cancel_requested: bool = Field(False, description="A cancel was asked for; a running job stops at its next chunk.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    status_url: str
    result_url: str
    model_name: str | None = Field(
        None, description="The model the job was accepted for: only sidecars of this model run it."
    )
    model_version: str | None = Field(None, description="Its version at acceptance.")
    input_shape: list[int] | None = Field(None, description="The per-row input shape the rows were checked against.")
    result_model_name: str | None = Field(None, description="The model that computed the result (once succeeded).")
    result_model_version: str | None = Field(
        None, description="Its version; when rows came from several (a hot swap, a canary): each, ascending, "
                          "comma-separated, e.g. \"3,4\".")
    owner: str | None = Field(None, description="Who submitted it (an API key id), when known.")
    priority: int = Field(0, description="Its priority; higher ones run first.")
    earlier_runs: list[EarlierRun] = Field(
        default_factory=list, description="Its failed runs before each retry (POST /jobs/{id}/retry), oldest first."
    )
    expires_at: datetime | None = Field(None, description="Its deadline: not started by then, it ends expired.")
    callback: CallbackState | None = Field(None, description="Its webhooks, when it asked for them (callback_url).")

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATES


class JobSpec(BaseModel):
    """The broker message: what a sidecar needs to find and run a job (its record has the rest)."""

    job_id: str
    task: str
    input_key: str | None = Field(None, description="Store key of the rows, if the job has any.")
    options: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str = Field(description="Hash of the submission, to tell an idempotent retry from a reuse.")
    priority: int = 0
    promote: bool = Field(False, description="Activate the model version the job makes (train).")
    run: int = Field(0, description="Which run of the job this message is: 0, then one more for each retry of "
                     "it (POST /jobs/{id}/retry), so a late dead letter of an earlier run is told apart.")
