"""POST /jobs/batch: all checked first, recorded together, published together, ids in order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inference_client import AsyncInferenceClient, InferenceClient
from inference_client._cli import main
from jobs.settings import JobsSettings
from tests.jobs.conftest import embedded_settings, finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FakeWorker


def job(value: float, **fields: object) -> dict:
    return {"task": "batch_predict", "inputs": [{"input_data": [value, 1.0, 2.0, 3.0]}], **fields}


async def test_a_batch_runs_every_job_and_answers_ids_in_order(jobs_settings: JobsSettings) -> None:
    jobs = [job(float(i)) for i in range(20)]
    async with gateway(jobs_settings) as client:
        answer = await client.post("/jobs/batch", json={"jobs": jobs})
        assert answer.status_code == 202, answer.text
        ids = answer.json()["job_ids"]
        assert len(set(ids)) == 20 and answer.json()["replayed"] == [False] * 20
        async with sidecar(jobs_settings):
            for i, job_id in enumerate(ids):
                status = await wait_for_job(client, job_id, finished)
                assert status["status"] == "succeeded", status
                result = (await client.get(f"/jobs/{job_id}/result")).json()
                assert result["output"][0]["prediction"] == [i + 6.0]


async def test_a_bad_job_refuses_the_batch_naming_it(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url)) as client:
        bad = {"task": "batch_predict", "inputs": [{"input_data": ["x"]}]}
        answer = await client.post("/jobs/batch", json={"jobs": [job(1.0), job(2.0), bad, {"task": "nope"}]})
        assert answer.status_code == 422
        assert answer.json()["error"]["message"].startswith("jobs[2]: inputs[0].input_data[0]")
        unknown = await client.post("/jobs/batch", json={"jobs": [job(1.0), {**job(2.0), "colour": "red"}]})
        assert unknown.status_code == 422 and unknown.json()["error"]["message"].startswith("jobs[1]: colour")
        empty = await client.post("/jobs/batch", json={"jobs": []})
        assert empty.status_code == 422
        assert (await client.get("/jobs")).json()["jobs"] == []


async def test_more_than_job_batch_max_is_422(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url, job_batch_max=3)) as client:
        answer = await client.post("/jobs/batch", json={"jobs": [job(1.0)] * 4})
        assert answer.status_code == 422 and "JOB_BATCH_MAX" in answer.json()["error"]["message"]


async def test_idempotency_keys_per_job(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url)) as client:
        jobs = [job(1.0, idempotency_key="a"), job(2.0), job(3.0, idempotency_key="c")]
        first = (await client.post("/jobs/batch", json={"jobs": jobs})).json()
        again = (await client.post("/jobs/batch", json={"jobs": jobs})).json()
        assert again["job_ids"][0] == first["job_ids"][0] and again["job_ids"][2] == first["job_ids"][2]
        assert again["job_ids"][1] != first["job_ids"][1]  # no key: a new job
        assert again["replayed"] == [True, False, True]
        # The same key as POST /jobs's header names the same job.
        single = await client.post("/jobs", json=job(1.0), headers={"Idempotency-Key": "a"})
        assert single.json()["job_id"] == first["job_ids"][0] and single.headers["idempotent-replayed"] == "true"
        reused = await client.post("/jobs/batch", json={"jobs": [job(9.0), job(5.0, idempotency_key="c")]})
        assert reused.status_code == 422
        assert reused.json()["error"]["message"] == "jobs[1]: idempotency_key: already used for a different job"
        twice = await client.post("/jobs/batch", json={"jobs": [job(7.0, idempotency_key="d")] * 2})
        assert twice.json()["job_ids"][0] == twice.json()["job_ids"][1]
        assert len((await client.get("/jobs")).json()["jobs"]) == 5


async def test_the_clients_submit_jobs_and_the_cli_splits_rows(
    tmp_path: Path, fake_worker: FakeWorker, capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [[float(i), 1.0, 2.0, 3.0] for i in range(5)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    settings = embedded_settings(tmp_path, fake_worker.url)
    async with gateway(settings) as client, sidecar(settings):
        url = str(client.base_url)
        async with AsyncInferenceClient(url) as caller:
            ids = await caller.submit_jobs([job(float(i)) for i in range(5)], batch_size=2)  # 3 requests
            assert len(set(ids)) == 5
            assert [(await caller.wait(job_id)).status for job_id in ids] == ["succeeded"] * 5
        with InferenceClient(url) as sync_caller:
            again = await asyncio.to_thread(sync_caller.submit_jobs, [{"inputs": [{"input_data": rows[0]}]}])
            assert len(again) == 1
        argv = ["--url", url, "submit", "--inputs", str(tmp_path / "rows.json"), "--split", "2",
                "--idempotency-key", "rows"]
        assert await asyncio.to_thread(main, argv) == 0
        split_ids = json.loads(capsys.readouterr().out)["job_ids"]
        assert len(split_ids) == 3
        sizes = [(await client.get(f"/jobs/{job_id}")).json()["progress"]["total"] for job_id in split_ids]
        assert sizes == [2, 2, 1]
        assert await asyncio.to_thread(main, argv) == 0  # the same keys: the same jobs
        assert json.loads(capsys.readouterr().out)["job_ids"] == split_ids
