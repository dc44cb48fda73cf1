"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from inference_client import _calls as calls
from inference_client._base import ClientBase
from inference_client._calls import Call, Row, read_files
from inference_client._exceptions import transport_errors
from inference_client._models import (
    ActivationResult,
    GatewayHealth,
    GatewayInfo,
    JobResult,
    JobStatus,
    ModelSummary,
    ModelVersion,
    ModelVersions,
    Prediction,
)
from inference_client._waiting import JobWaiter

T = TypeVar("T")


class InferenceClient(ClientBase):
    """A client of the gateway. Use it as a context manager, or call :meth:`close`.

    Rows are nested lists, or NumPy / JAX arrays, of the served model's input shape.
    """

    _http: httpx.Client

    def _open(self) -> httpx.Client:
        return httpx.Client(transport=self._retrying(httpx.HTTPTransport), **self._http_kwargs)

    def _call(self, call: Call[T]) -> T:
        with transport_errors(self.base_url):
            response = self._http.request(**call.request_kwargs())
        return call.parse(response)

    def predict(self, row: Row, *, return_probabilities: bool = False, model: str | None = None) -> Prediction:
        """Predict one row with ``model`` (a served model's name; None: the gateway's default model)."""
        return self._call(calls.predict(row, return_probabilities, model))

    def batch_predict(
        self, rows: Iterable[Row], *, return_probabilities: bool = False, model: str | None = None,
    ) -> list[Prediction]:
        """Predict many rows in one request with ``model`` (None: the default one); answers in the rows' order."""
        return self._call(calls.batch_predict(rows, return_probabilities, model))

    def submit_job(
        self, task: str = "batch_predict", inputs: Iterable[Any] | None = None, *,
        options: Mapping[str, Any] | None = None, input_uri: str | None = None, idempotency_key: str | None = None,
        promote: bool = False, model: str | None = None,
    ) -> JobStatus:
        """Queue a job (for ``batch_predict``, ``inputs`` are ``/batch_predict`` items); answers once it is queued.

        The same ``idempotency_key`` with the same body returns the same job; without one, a fresh key
        still makes this call's own retries safe. ``promote`` (``train`` only): activate the version the job
        registers once it succeeds. ``model``: the served model it is for (None: the gateway's default model).
        """
        return self._call(calls.submit_job(task, inputs, options, input_uri, idempotency_key, promote, model))

    def submit_jobs(
        self, jobs: Iterable[Mapping[str, Any]], *, task: str = "batch_predict", batch_size: int = 500,
        model: str | None = None,
    ) -> list[str]:
        """Queue many jobs, ``batch_size`` per ``POST /jobs/batch`` (at most the gateway's JOB_BATCH_MAX); their
        ids in order. Each job is a ``POST /jobs`` body (``inputs``, ``options``, ``callback_url``,
        ``deadline_s``, ``idempotency_key``, ``model``...); ``task`` and ``model`` fill in where one names none."""
        ids: list[str] = []
        for chunk in calls.chunks(jobs, batch_size):
            ids += self._call(calls.submit_jobs(chunk, task, model)).job_ids
        return ids

    def list_jobs(
        self, *, status: str | None = None, task: str | None = None, model: str | None = None, limit: int = 50,
    ) -> list[JobStatus]:
        """The newest jobs first, at most ``limit``, filtered by state, task type and model name (the pages
        of ``GET /jobs`` followed); with API keys, the key's own jobs."""
        jobs: list[JobStatus] = []
        cursor: str | None = None
        while len(jobs) < limit:
            page = self._call(calls.list_jobs(status, task, model, min(limit - len(jobs), calls.JOB_PAGE), cursor))
            jobs += page.jobs
            if (cursor := page.next_cursor) is None:
                break
        return jobs

    def job_status(self, job_id: str) -> JobStatus:
        return self._call(calls.job_status(job_id))

    def wait(
        self, job_id: str, *, timeout: float | None = None, progress: bool = True, max_poll_interval: float = 2.0,
    ) -> JobStatus:
        """Poll until the job succeeded, with a progress bar on a terminal's stderr.

        Raises JobFailedError (JobCancelledError) when it did not, InferenceTimeoutError past ``timeout``.
        """
        with JobWaiter(job_id, timeout, progress, max_poll_interval) as waiter:
            while (delay := waiter.next_poll(status := self.job_status(job_id))) is not None:
                time.sleep(delay)
        return status

    def result(self, job_id: str) -> JobResult:
        """A succeeded job's result (ConflictError before)."""
        return self._call(calls.job_result(job_id))

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: a queued one at once, a running one at its next chunk (ConflictError if finished)."""
        return self._call(calls.cancel_job(job_id))

    def retry_job(self, job_id: str) -> JobStatus:
        """Run a failed job again under its id, queued as a fresh run; its failed run shows in ``earlier_runs``.

        ConflictError (``job_not_failed``) unless it failed. A resubmission with the same Idempotency-Key
        returns the failed job instead: this is how it runs again.
        """
        return self._call(calls.retry_job(job_id))

    def models(self) -> list[ModelSummary]:
        """Every model: its active version, canary and number of versions."""
        return self._call(calls.models())

    def versions(self, name: str) -> ModelVersions:
        """A model's versions with their manifests, what serves, and the history of changes."""
        return self._call(calls.versions(name))

    def upload(self, name: str, paths: Iterable[str | Path]) -> ModelVersion:
        """Upload files (what the model's ``save`` wrote) as a new version; a worker checks it first
        (InvalidInputError with the reason if it is refused). Needs an admin key when keys are on."""
        return self._call(calls.upload(name, read_files(paths)))

    def activate(self, name: str, version: str | int, traffic: int | None = None) -> ActivationResult:
        """Serve ``version`` on every worker; ``traffic`` 1..99: as a canary with that percent of requests."""
        return self._call(calls.activate(name, version, traffic))

    def rollback(self, name: str) -> ActivationResult:
        """Serve the version that was active before the current one."""
        return self._call(calls.rollback(name))

    def health(self) -> GatewayHealth:
        """The gateway's health, unhealthy included (never retried)."""
        return self._call(calls.health())

    def info(self) -> GatewayInfo:
        """The gateway and each of its workers."""
        return self._call(calls.info())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
