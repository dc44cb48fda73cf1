"""Jobs live through their model's version changes: a hot swap or a canary mid-job fails no attempt, and the
record names every version that computed its rows; another model's answers still fail the attempt."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from jobs.attempt import ComputingVersions
from jobs.settings import JobsSettings
from tests.jobs.conftest import finished, gateway, sidecar, until, wait_for_job
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker

#: One row per worker call with JOB_CHUNK_ROWS=1: seconds of work to change the worker under.
ROWS = [{"input_data": [float(i), 1.0, 2.0, 3.0]} for i in range(12)]


@pytest.fixture(autouse=True)
def _no_canary(fake_worker: FakeWorker) -> Iterator[None]:
    """The module's worker answers as one version again after each test."""
    yield
    fake_worker.canary_versions = []


def _one_row_calls(settings: JobsSettings) -> JobsSettings:
    """A worker call per row, its /health read every 0.1 s: a version change lands mid-job."""
    return settings.model_copy(update={"job_chunk_rows": 1, "sidecar_model_check_s": 0.1})


async def _submit(client: httpx.AsyncClient, rows: list[dict[str, Any]]) -> str:
    return (await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})).json()["job_id"]


async def _result(client: httpx.AsyncClient, status: dict[str, Any]) -> dict[str, Any]:
    return (await client.get(f"/jobs/{status['job_id']}/result")).json()


def _assert_own_answers(result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    assert [answer["prediction"] for answer in result["output"]] == [[sum(row["input_data"])] for row in rows]


async def test_the_versions_of_an_attempt_are_named_once_each_in_ascending_order() -> None:
    versions = ComputingVersions("7")
    assert versions.describe() == "7"  # no answer named a version: the one the attempt started on
    for version in ("10", "9", None, "9", "canary-b", "canary-a"):
        async def answered(rows: list[dict[str, Any]], request_id: str, named: str | None = version) -> tuple[
                list[Any], str | None]:
            return rows, named

        assert await versions.collecting(answered)([{"x": 1}], "job") == [{"x": 1}]
    assert versions.describe() == "9,10,canary-a,canary-b"


async def test_a_job_running_while_its_worker_swaps_version_succeeds_in_one_attempt_naming_both(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    settings = _one_row_calls(jobs_settings)
    fake_worker.delay_s = 0.15
    async with gateway(settings) as client, sidecar(settings) as running:
        job_id = await _submit(client, ROWS)
        await wait_for_job(client, job_id, lambda status: status["progress"]["done"] >= 2)
        fake_worker.model_version = "2"  # its /health and its answers from now on
        status = await wait_for_job(client, job_id, finished)
        result = await _result(client, status)
        assert running.model is not None and running.model.version == "2"  # followed, not rebound
    assert status["status"] == "succeeded" and status["attempts"] == 1 and status["error"] is None, status
    assert (status["model_version"], status["result_model_version"]) == ("1", "1,2")
    assert (result["model_name"], result["model_version"]) == (FAKE_MODEL, "1,2")
    _assert_own_answers(result, ROWS)
    assert fake_worker.rows_seen == len(ROWS)  # no row computed twice


async def test_a_job_on_a_worker_whose_answers_alternate_versions_succeeds_naming_each(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    settings = _one_row_calls(jobs_settings)
    fake_worker.canary_versions = ["10", "9"]  # /health keeps naming "1", the active version
    async with gateway(settings) as client, sidecar(settings):
        status = await wait_for_job(client, await _submit(client, ROWS[:4]), finished)
        result = await _result(client, status)
    assert status["status"] == "succeeded" and status["attempts"] == 1, status
    assert status["result_model_version"] == result["model_version"] == "9,10"  # by number, not as text
    _assert_own_answers(result, ROWS[:4])
    assert fake_worker.rows_seen == 4


async def test_jobs_coalesced_into_one_call_each_name_that_call_s_version(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    """One worker call in flight, of 4 rows at most: the jobs waiting meanwhile share the next ones, each
    job that call's version."""
    settings = jobs_settings.model_copy(update={"job_chunk_rows": 4, "sidecar_worker_calls": 1})
    fake_worker.canary_versions, fake_worker.delay_s = ["1", "2"], 0.05
    async with gateway(settings) as client:
        jobs = [await _submit(client, [row]) for row in ROWS]
        async with sidecar(settings):
            statuses = [await wait_for_job(client, job_id, finished) for job_id in jobs]
    assert all(status["status"] == "succeeded" and status["attempts"] == 1 for status in statuses), statuses
    assert {status["result_model_version"] for status in statuses} == {"1", "2"}
    assert len(ROWS) / 4 <= fake_worker.calls < len(ROWS) and fake_worker.rows_seen == len(ROWS)


async def test_answers_of_another_model_name_still_fail_the_attempt(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    settings = _one_row_calls(jobs_settings)
    fake_worker.delay_s = 0.15
    async with gateway(settings) as client, sidecar(settings) as running:
        job_id = await _submit(client, ROWS)
        await wait_for_job(client, job_id, lambda status: status["progress"]["done"] >= 2)
        fake_worker.model_name, fake_worker.model_version = "other", "2"
        status = await wait_for_job(client, job_id, lambda status: status["error"] is not None)
        assert status["status"] == "queued" and status["error"]["code"] == "model_changed", status
        await until(lambda: running.model is not None and running.model.name == "other")
        fake_worker.model_name = FAKE_MODEL  # version 2 of the job's model: it runs again, from the start
        status = await wait_for_job(client, job_id, finished)
    assert status["status"] == "succeeded", status
    assert (status["result_model_name"], status["result_model_version"]) == (FAKE_MODEL, "2")  # its last attempt's
    assert fake_worker.rows_seen > len(ROWS)


@contextlib.asynccontextmanager
async def _spreading_over(settings: JobsSettings, worker: FakeWorker) -> AsyncIterator[
        tuple[httpx.AsyncClient, JobsSettings]]:
    """A gateway over ``worker`` alone, and the settings of a sidecar (of the module's worker) spreading there."""
    async with gateway(settings, workers=[worker.url.removeprefix("http://")]) as client:
        while (await client.get("/gateway/health")).json().get("alive_backends") != 1:
            await asyncio.sleep(0.05)  # its first probe
        yield client, settings.model_copy(update={"sidecar_spread_url": str(client.base_url)})


@contextlib.asynccontextmanager
async def _other_worker(*versions: str) -> AsyncIterator[FakeWorker]:
    """A worker of the fake model whose answers name ``versions`` in turn."""
    worker = FakeWorker()
    worker.model_version, worker.canary_versions = versions[0], list(versions)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.mark.parametrize(("versions", "named"), [(("2",), "2"), (("1", "2"), "1,2")])
async def test_spread_chunks_of_another_version_are_the_job_s_answers_never_computed_again(
    jobs_settings: JobsSettings, fake_worker: FakeWorker, versions: tuple[str, ...], named: str,
) -> None:
    rows = ROWS * 2  # 12 chunks of JOB_CHUNK_ROWS=2, each through the gateway; the own worker serves version 1
    async with _other_worker(*versions) as other, _spreading_over(jobs_settings, other) as (client, settings):
        async with sidecar(settings):
            status = await wait_for_job(client, await _submit(client, rows), finished)
        result = await _result(client, status)
    assert status["status"] == "succeeded" and status["attempts"] == 1, status
    assert status["result_model_version"] == result["model_version"] == named
    _assert_own_answers(result, rows)
    assert (other.rows_seen, fake_worker.rows_seen) == (len(rows), 0)  # the own worker computed nothing again
