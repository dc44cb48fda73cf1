"""SIDECAR_SPREAD_URL: a large job's chunks go to a gateway, which spreads them over every worker (jobs/spread.py).

Real gateways (in this process) in front of real HTTP workers (tests.jobs.fake_worker), a real sidecar and
broker: each worker counts the calls it answered, so a test sees where the chunks went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from jobs.settings import JobsSettings
from tests.jobs.conftest import embedded_settings, finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FakeWorker
from tests.support import free_port

#: 20 chunks of JOB_CHUNK_ROWS=2 (the tests' setting), each row's answer its own (the sum of its input).
ROWS = [{"input_data": [1.0, 2.0, 3.0, float(i)]} for i in range(40)]
API_KEY = "spread-test-key"


@contextlib.asynccontextmanager
async def _other_worker(name: str | None = None) -> AsyncIterator[FakeWorker]:
    """A second worker of the fake model (or of model ``name``), beside the module's."""
    worker = FakeWorker()
    if name is not None:
        worker.model_name = name
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@contextlib.asynccontextmanager
async def _spreading(settings: JobsSettings, *workers: FakeWorker,
                     **gateway_changes: object) -> AsyncIterator[tuple[httpx.AsyncClient, JobsSettings]]:
    """A gateway over ``workers`` once it sees them all, and the settings of a sidecar spreading through it."""
    addresses = [worker.url.removeprefix("http://") for worker in workers]
    async with gateway(settings, workers=addresses, **gateway_changes) as client:
        while (await client.get("/gateway/health")).json().get("alive_backends") != len(workers):
            await asyncio.sleep(0.05)  # its first probes
        yield client, settings.model_copy(update={"sidecar_spread_url": str(client.base_url)})


async def _run(client: httpx.AsyncClient, settings: JobsSettings, rows: list[dict[str, object]],
               headers: dict[str, str] | None = None) -> dict[str, object]:
    async with sidecar(settings):
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": rows}, headers=headers)).json()
        return await wait_for_job(client, job["job_id"], finished)


async def test_a_large_job_s_chunks_reach_every_worker_and_its_result_is_batch_predict_s(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    async with _other_worker() as other, _spreading(jobs_settings, fake_worker, other) as (client, settings):
        fake_worker.delay_s = other.delay_s = 0.02  # chunks overlap, as a large job's do
        status = await _run(client, settings, ROWS)
        assert status["status"] == "succeeded", status
        output = (await client.get(f"/jobs/{status['job_id']}/result")).json()["output"]
        direct = (await client.post("/batch_predict", json=ROWS)).json()
    assert output == direct
    assert status["result_model_name"] == fake_worker.model_name and status["result_model_version"] == "1"
    assert fake_worker.calls > 0 and other.calls > 0, (fake_worker.calls, other.calls)


async def test_a_job_of_one_chunk_still_goes_to_the_own_worker(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with _other_worker() as other, \
            _spreading(embedded_settings(tmp_path, fake_worker.url), fake_worker, other) as (client, settings):
        before = fake_worker.calls + other.calls  # the gateway's probes answer /health, not counted
        status = await _run(client, settings, ROWS[:2])
    assert status["status"] == "succeeded", status
    assert (fake_worker.calls, other.calls) == (before + 1, 0)


async def test_the_sidecar_sends_its_key_to_a_gateway_with_api_keys(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, worker_api_key=API_KEY)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with _other_worker() as other, _spreading(settings, fake_worker, other, api_keys=[API_KEY]) as (
            client, spreading):
        client.headers.update(auth)
        fake_worker.delay_s = other.delay_s = 0.02
        status = await _run(client, spreading, ROWS)
    assert status["status"] == "succeeded", status
    assert other.calls > 0, "the gateway refused the sidecar: its chunks all went to the own worker"


async def test_with_the_gateway_down_the_own_worker_runs_every_chunk(tmp_path: Path, fake_worker: FakeWorker) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = embedded_settings(tmp_path, fake_worker.url, sidecar_spread_url=down)
    async with gateway(settings) as client:
        status = await _run(client, settings, ROWS)
        output = (await client.get(f"/jobs/{status['job_id']}/result")).json()["output"]
    assert status["status"] == "succeeded" and status["attempts"] == 1, status
    assert [row["prediction"] for row in output] == [[sum(row["input_data"])] for row in ROWS]
    assert fake_worker.rows_seen == len(ROWS)


async def test_chunks_answered_by_another_model_never_make_a_result(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url)
    async with _other_worker(name="another-model") as other, gateway(settings) as client:
        async with _spreading(settings, other) as (_, spreading):
            status = await _run(client, spreading, ROWS)
    assert status["status"] == "failed" and status["result_model_name"] is None, status
    assert status["attempts"] == settings.job_max_deliveries and status["error"]["code"] == "delivery_limit"
    assert "'another-model', not 'fake'" in status["error"]["message"]


async def test_a_row_the_workers_refuse_fails_the_job_at_once_as_without_spreading(
    tmp_path: Path, fake_worker: FakeWorker,
) -> None:
    rows = [*ROWS, {"input_data": [-1.0, 0.0, 0.0, 0.0]}]
    async with _other_worker() as other, \
            _spreading(embedded_settings(tmp_path, fake_worker.url), fake_worker, other) as (client, settings):
        status = await _run(client, settings, rows)
    assert status["status"] == "failed" and status["attempts"] == 1, status
    assert status["error"]["code"] == "invalid_input" and "rows 40..40" in status["error"]["message"]


async def test_cancel_stops_a_spread_job_at_its_next_chunk(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with _other_worker() as other, \
            _spreading(embedded_settings(tmp_path, fake_worker.url), fake_worker, other) as (client, settings):
        fake_worker.delay_s = other.delay_s = 0.2
        async with sidecar(settings):
            job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
            await wait_for_job(client, job["job_id"], lambda s: s["progress"]["done"] >= 2)
            assert (await client.delete(f"/jobs/{job['job_id']}")).status_code == 202
            status = await wait_for_job(client, job["job_id"], finished)
    assert status["status"] == "cancelled", status
    assert fake_worker.rows_seen + other.rows_seen < len(ROWS)


@pytest.mark.parametrize("setting", ["worker_url", "sidecar_spread_url"])
def test_the_sidecars_http_urls_must_be_plain_http(setting: str, tmp_path: Path) -> None:
    """Both go through the forwarder's client, which speaks plain HTTP only: a TLS URL is refused at start-up."""
    with pytest.raises(ValidationError, match="http:// URL"):
        JobsSettings(jobs_dir=tmp_path, **{setting: "https://gateway.example:443"})
