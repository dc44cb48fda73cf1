"""The asynchronous client: the calls of InferenceClient, awaited."""

from __future__ import annotations

import asyncio
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


class AsyncInferenceClient(ClientBase):
    """The async twin of :class:`InferenceClient`; each method is documented there."""

    _http: httpx.AsyncClient

    def _open(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._retrying(httpx.AsyncHTTPTransport), **self._http_kwargs)

    async def _call(self, call: Call[T]) -> T:
        with transport_errors(self.base_url):
            response = await self._http.request(**call.request_kwargs())
        return call.parse(response)

    async def predict(self, row: Row, *, return_probabilities: bool = False, model: str | None = None) -> Prediction:
        return await self._call(calls.predict(row, return_probabilities, model))

    async def batch_predict(
        self, rows: Iterable[Row], *, return_probabilities: bool = False, model: str | None = None,
    ) -> list[Prediction]:
        return await self._call(calls.batch_predict(rows, return_probabilities, model))

    async def submit_job(
        self, task: str = "batch_predict", inputs: Iterable[Any] | None = None, *,
        options: Mapping[str, Any] | None = None, input_uri: str | None = None, idempotency_key: str | None = None,
        promote: bool = False, model: str | None = None,
    ) -> JobStatus:
        return await self._call(calls.submit_job(task, inputs, options, input_uri, idempotency_key, promote, model))

    async def submit_jobs(
        self, jobs: Iterable[Mapping[str, Any]], *, task: str = "batch_predict", batch_size: int = 500,
        model: str | None = None,
    ) -> list[str]:
        ids: list[str] = []
        for chunk in calls.chunks(jobs, batch_size):
            ids += (await self._call(calls.submit_jobs(chunk, task, model))).job_ids
        return ids

    async def list_jobs(
        self, *, status: str | None = None, task: str | None = None, model: str | None = None, limit: int = 50,
    ) -> list[JobStatus]:
        jobs: list[JobStatus] = []
        cursor: str | None = None
        while len(jobs) < limit:
            call = calls.list_jobs(status, task, model, min(limit - len(jobs), calls.JOB_PAGE), cursor)
            page = await self._call(call)
            jobs += page.jobs
            if (cursor := page.next_cursor) is None:
                break
        return jobs

    async def job_status(self, job_id: str) -> JobStatus:
        return await self._call(calls.job_status(job_id))

    async def wait(
        self, job_id: str, *, timeout: float | None = None, progress: bool = True, max_poll_interval: float = 2.0,
    ) -> JobStatus:
        with JobWaiter(job_id, timeout, progress, max_poll_interval) as waiter:
            while (delay := waiter.next_poll(status := await self.job_status(job_id))) is not None:
                await asyncio.sleep(delay)
        return status

    async def result(self, job_id: str) -> JobResult:
        return await self._call(calls.job_result(job_id))

    async def cancel(self, job_id: str) -> JobStatus:
        return await self._call(calls.cancel_job(job_id))

    async def retry_job(self, job_id: str) -> JobStatus:
        return await self._call(calls.retry_job(job_id))

    async def models(self) -> list[ModelSummary]:
        return await self._call(calls.models())

    async def versions(self, name: str) -> ModelVersions:
        return await self._call(calls.versions(name))

    async def upload(self, name: str, paths: Iterable[str | Path]) -> ModelVersion:
        return await self._call(calls.upload(name, read_files(paths)))

    async def activate(self, name: str, version: str | int, traffic: int | None = None) -> ActivationResult:
        return await self._call(calls.activate(name, version, traffic))

    async def rollback(self, name: str) -> ActivationResult:
        return await self._call(calls.rollback(name))

    async def health(self) -> GatewayHealth:
        return await self._call(calls.health())

    async def info(self) -> GatewayInfo:
        return await self._call(calls.info())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.aclose()
