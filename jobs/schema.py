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

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

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
    result_model_version: str | None = Field(None, description="Its version.")
    owner: str | None = Field(None, description="Who submitted it (an API key id), when known.")
    priority: int = Field(0, description="Its priority; higher ones run first.")
    earlier_runs: list[EarlierRun] = Field(
        default_factory=list, description="Its failed runs before each retry (POST /jobs/{id}/retry), oldest first."
    )

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
