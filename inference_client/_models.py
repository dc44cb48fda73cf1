"""Typed answers of the gateway.

They accept fields they do not name (``extra="allow"``): what a prediction holds beyond
``prediction`` is up to the served model (``answer.probabilities``, ``answer.model_extra``), and
a newer gateway may add fields without breaking an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Prediction(_Answer):
    """One row's answer: the model's fields, plus which worker answered and how long the model took."""

    prediction: Any = None
    worker_id: str | None = None
    inference_time_ms: float | None = None


class Progress(_Answer):
    done: int = 0
    total: int | None = None  # None until the job knows


class JobErrorInfo(_Answer):
    code: str
    message: str


class EarlierRun(_Answer):
    """A failed run of a job before :meth:`~inference_client.InferenceClient.retry_job` queued it again."""

    attempts: int = 0
    error: JobErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobStatus(_Answer):
    job_id: str
    task: str
    status: JobState
    progress: Progress = Field(default_factory=Progress)
    attempts: int = 0
    error: JobErrorInfo | None = None
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status_url: str | None = None
    result_url: str | None = None
    earlier_runs: list[EarlierRun] = Field(default_factory=list)  # oldest first
    model_name: str | None = None  # the model the job was accepted for
    model_version: str | None = None
    result_model_name: str | None = None  # the model that computed the result, once succeeded
    result_model_version: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled", "expired")


class JobPage(_Answer):
    """One page of ``GET /jobs`` (the client's ``list_jobs`` follows the cursors)."""

    jobs: list[JobStatus]
    next_cursor: str | None = None


class JobBatch(_Answer):
    """The answer to ``POST /jobs/batch``: the jobs' ids in the order they were sent."""

    job_ids: list[str]
    replayed: list[bool] = Field(default_factory=list)  # per job: its idempotency key named an existing job


class JobResult(_Answer):
    job_id: str
    task: str
    model_name: str | None = None  # the model that computed the output
    model_version: str | None = None
    output: Any  # for batch_predict: one prediction per input row, in order


class GatewayHealth(_Answer):
    status: Literal["healthy", "degraded", "unhealthy"]
    alive_backends: int
    total_backends: int


class BackendInfo(_Answer):
    url: str
    state: str
    worker_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None


class GatewayInfo(_Answer):
    name: str
    version: str
    total_backends: int
    backends: list[BackendInfo]


class ModelSummary(_Answer):
    """One model of ``GET /models``: what serves it and how many versions it has."""

    name: str
    active: str | None = None
    canary: str | None = None
    canary_traffic: int = 0
    loaded: bool | None = None
    versions: int = 0


class ModelVersion(_Answer):
    """A version and its manifest (files with size and sha256, the specs it was checked with, fit's metrics)."""

    version: str
    created_at: float
    source: str
    job_id: str | None = None
    trained_from: str | None = None
    manifest: dict[str, Any] = Field(default_factory=dict)


class ModelVersions(_Answer):
    """A model's versions (oldest first), what serves, and its history of changes (newest first)."""

    model_name: str
    active: str | None = None
    canary: str | None = None
    canary_traffic: int = 0
    loaded: bool | None = None
    versions: list[ModelVersion] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list)


class WorkerChange(_Answer):
    worker: str
    ok: bool
    compilations: int = 0
    load_ms: float = 0.0
    error: str | None = None


class ActivationResult(_Answer):
    """The state every worker serves after an activate or a rollback, and each worker's part."""

    model_name: str
    active: str
    canary: str | None = None
    canary_traffic: int = 0
    loaded: bool = True
    workers: list[WorkerChange] = Field(default_factory=list)
    took_ms: float = 0.0
