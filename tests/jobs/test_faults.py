"""Faults: a sidecar killed mid-job, a sidecar stopped mid-job, a gateway restarted with jobs queued."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from jobs.settings import JobsSettings
from tests.jobs.conftest import finished, gateway, sidecar, sidecar_process, wait_for_job
from tests.jobs.fake_worker import FakeWorker
from tests.support import stop_process

ROWS = [{"input_data": [1.0, 2.0, 3.0, float(i)]} for i in range(20)]  # 10 chunks of 2


async def test_a_job_survives_its_sidecar_killed_mid_run(
    jobs_settings: JobsSettings, fake_worker: FakeWorker, tmp_path: Path
) -> None:
    fake_worker.delay_s = 1.0  # 10 chunks, 2 calls at a time: ~5 s, so the kill lands mid-run on a loaded machine
    async with gateway(jobs_settings) as client:
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
        doomed = sidecar_process(jobs_settings, tmp_path / "doomed.log")
        try:
            await wait_for_job(client, job["job_id"], lambda s: s["progress"]["done"] > 0)
            os.killpg(doomed.pid, signal.SIGKILL)
        finally:
            stop_process(doomed)
        fake_worker.delay_s = 0.0
        async with sidecar(jobs_settings) as survivor:
            status = await wait_for_job(client, job["job_id"], finished)
            assert survivor.metrics.jobs.labels("succeeded")._value.get() == 1
        assert status["status"] == "succeeded" and status["attempts"] == 2, status
        result = (await client.get(status["result_url"])).json()
        assert [row["prediction"] for row in result["output"]] == [[sum(r["input_data"])] for r in ROWS]


async def test_sigterm_lets_the_running_job_finish(fake_worker: FakeWorker, tmp_path: Path) -> None:
    from tests.jobs.conftest import embedded_settings

    settings = embedded_settings(tmp_path, fake_worker.url)
    fake_worker.delay_s = 0.2
    async with gateway(settings) as client:
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
        process = sidecar_process(settings, tmp_path / "sidecar.log")
        try:
            await wait_for_job(client, job["job_id"], lambda s: s["status"] == "running")
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 15)
            status = (await client.get(f"/jobs/{job['job_id']}")).json()
        finally:
            stop_process(process)
        assert code == 0, (tmp_path / "sidecar.log").read_text()
        assert status["status"] == "succeeded" and status["attempts"] == 1


async def test_jobs_queued_on_the_embedded_broker_outlive_a_gateway_restart(
    fake_worker: FakeWorker, tmp_path: Path
) -> None:
    from tests.jobs.conftest import embedded_settings

    settings = embedded_settings(tmp_path, fake_worker.url)
    async with gateway(settings) as client:
        ids = [(await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS[:3]})).json()["job_id"]
               for _ in range(5)]
    async with gateway(settings) as client:  # a new gateway process would see the same files
        ids.append((await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS[:1]})).json()["job_id"])
        async with sidecar(settings):
            statuses = [await wait_for_job(client, job_id, finished) for job_id in ids]
    assert [s["status"] for s in statuses] == ["succeeded"] * 6
