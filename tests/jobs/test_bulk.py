"""POST /jobs/batch: all checked first, recorded together, published together, ids in order."""

from __future__ import annotations

from pathlib import Path

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
