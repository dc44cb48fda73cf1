"""The job life cycle through a real gateway and sidecar, on both adapter pairs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs.schema import JobStatus
from jobs.settings import JobsSettings
from jobs.sidecar import Sidecar
from jobs.store import ArtifactStore
from tests.jobs.conftest import broker_of, embedded_settings, finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker

ROWS = [{"input_data": [float(i), 1.0, 2.0, 3.0]} for i in range(5)]


def expected(rows: list[dict]) -> list[list[float]]:
    return [[sum(row["input_data"])] for row in rows]


async def test_submit_run_and_fetch_the_result(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client:
        submitted = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert submitted.headers["location"] == f"/jobs/{job['job_id']}"
        assert job["status"] == "queued" and job["progress"] == {"done": 0, "total": 5}

        early = await client.get(f"/jobs/{job['job_id']}/result")
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"

        async with sidecar(jobs_settings):
            status = await wait_for_job(client, job["job_id"], finished)
        assert status["status"] == "succeeded", status
        assert status["progress"] == {"done": 5, "total": 5}
        assert status["attempts"] == 1 and status["started_at"] and status["finished_at"]

        result = await client.get(status["result_url"])
        assert result.status_code == 200
        assert [row["prediction"] for row in result.json()["output"]] == expected(ROWS)


async def test_input_uri_inside_the_store(jobs_settings: JobsSettings) -> None:
    store = ArtifactStore.from_settings(jobs_settings)
    await store.put("inputs/big.json", orjson.dumps(ROWS))
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        uri = store.uri_for_key("inputs/big.json")
        submitted = await client.post("/jobs", json={"task": "batch_predict", "input_uri": uri})
        assert submitted.status_code == 202, submitted.text
        status = await wait_for_job(client, submitted.json()["job_id"], finished)
        assert status["status"] == "succeeded" and status["progress"]["total"] == 5
        result = (await client.get(status["result_url"])).json()
        assert [row["prediction"] for row in result["output"]] == expected(ROWS)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"task": "nope", "inputs": ROWS}, "task"),
        ({"task": "batch_predict", "inputs": []}, "inputs"),
        ({"task": "batch_predict", "inputs": [{"input_data": ["a"]}]}, "inputs[0].input_data[0]"),
        ({"task": "batch_predict", "inputs": [{"input_data": [1.0], "extra": 1}]}, "inputs[0].extra"),
        ({"task": "batch_predict"}, "needs inputs"),
        ({"task": "train", "inputs": [{"input_data": [1.0, 2.0], "label": 5}]}, "inputs[0].target: Field required"),
        ({"task": "batch_predict", "input_uri": "s3://other-bucket/x.json"}, "input_uri"),
        ({"task": "batch_predict", "input_uri": "file:///etc/passwd"}, "input_uri"),
        ({"task": "batch_predict", "input_uri": "http://example.com/x.json"}, "input_uri"),
        ({"task": "batch_predict", "inputs": ROWS, "input_uri": "s3://x/y"}, "either"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_queued(
    jobs_settings: JobsSettings, body: dict, where: str
) -> None:
    async with gateway(jobs_settings) as client:
        answer = await client.post("/jobs", json=body, headers={"x-request-id": "r-1"})
        assert answer.status_code == 422, answer.text
        error = answer.json()
        assert error["request_id"] == "r-1" and error["error"]["code"] == "invalid_job"
        assert where in error["error"]["message"]
        json_type = {"content-type": "application/json"}
        assert (await client.post("/jobs", content=b"{nope", headers=json_type)).status_code == 400
        non_finite = await client.post("/jobs", content=b'{"task": "batch_predict", "inputs": [NaN]}',
                                       headers=json_type)
        assert non_finite.status_code == 422 and "non-finite numbers are refused" in non_finite.text
    async with broker_of(jobs_settings) as broker:
        assert await broker.count(FAKE_MODEL) == 0


async def test_rows_of_the_wrong_shape_for_the_served_model_are_refused(tmp_path: Path) -> None:
    worker = FakeWorker(input_shape=(4,)).start()
    settings = embedded_settings(tmp_path, worker.url)
    try:
        async with gateway(settings) as client:
            while (await client.get("/gateway/health")).status_code != 200:  # the first probe, at start-up
                await asyncio.sleep(0.05)
            rows = [{"input_data": [1.0, 2.0, 3.0, 4.0]}, {"input_data": [1.0, 2.0]}]
            answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})
            assert answer.status_code == 422
            assert answer.json()["error"]["message"] == "inputs[1].input_data: expected shape (4,), got (2,)"
            # A value the worker's FP32 input cannot hold is refused here, as /predict refuses it.
            rows = [{"input_data": [1.0, 2.0, 3.0, 4.0]}, {"input_data": [1.0, 2.0, 3.0, 1e39]}]
            answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})
            assert answer.status_code == 422
            assert answer.json()["error"]["message"] == "inputs[1].input_data: values overflow FP32"
            answer = await client.post("/jobs", json={"task": "train"})
            assert answer.status_code == 422
            assert answer.json()["error"]["message"] == "task: model 'fake' has no fit(): it cannot be trained by a job"
        async with broker_of(settings) as broker:
            assert await broker.count(FAKE_MODEL) == 0
    finally:
        worker.stop()


async def test_a_body_over_the_inline_limit_is_413_with_a_hint(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, "http://127.0.0.1:9", job_max_inline_bytes=100)
    async with gateway(settings) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS * 5})
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"
        assert "input_uri" in answer.json()["error"]["message"]
    async with broker_of(settings) as broker:
        assert await broker.count(FAKE_MODEL) == 0


async def test_path_traversal_in_input_uri_is_refused(jobs_settings: JobsSettings) -> None:
    store = ArtifactStore.from_settings(jobs_settings)
    await store.put("inputs/ok.json", orjson.dumps(ROWS))
    async with gateway(jobs_settings) as client:
        for tail in ("inputs/../inputs/ok.json", "inputs/%2e%2e/inputs/ok.json", "inputs//ok.json"):
            answer = await client.post("/jobs", json={"task": "batch_predict", "input_uri": store.uri_prefix + tail})
            assert answer.status_code == 422, tail
        missing = await client.post("/jobs", json={"task": "batch_predict",
                                                    "input_uri": store.uri_for_key("inputs/none.json")})
        assert missing.status_code == 422 and "no object" in missing.json()["error"]["message"]


async def test_idempotent_resubmission_returns_the_same_job(jobs_settings: JobsSettings) -> None:
    body = {"task": "batch_predict", "inputs": ROWS}
    async with gateway(jobs_settings) as client:
        first = await client.post("/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        again = await client.post("/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        assert first.status_code == again.status_code == 202
        assert again.json()["job_id"] == first.json()["job_id"]
        assert again.headers["idempotent-replayed"] == "true"
        other = await client.post("/jobs", json={**body, "inputs": ROWS[:1]}, headers={"Idempotency-Key": "order-42"})
        assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]["message"]
        async with broker_of(jobs_settings) as broker:
            assert await broker.count(FAKE_MODEL) == 1


def jobs_counted(runner: Sidecar, state: str) -> float:
    """The sidecar's ``jobs_total{state}``."""
    return sum(sample.value for metric in runner.metrics.jobs.collect() for sample in metric.samples
               if sample.name == "jobs_total" and sample.labels == {"state": state})


async def test_two_deliveries_of_one_job_on_one_sidecar_run_it_once(tmp_path: Path, fake_worker: FakeWorker) -> None:
    """A duplicated message (a publish sent again after a lost confirm) held together with the first copy: the
    second waits for the first's run, then finds the job finished and is acked."""
    settings = embedded_settings(tmp_path, fake_worker.url)
    fake_worker.delay_s = 0.3  # the run is still going when the copy is handled
    async with gateway(settings) as client:
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
        async with broker_of(settings) as broker:
            deliveries = broker.consume(FAKE_MODEL, 1)
            message = await anext(deliveries)
            await message.release()
            await deliveries.aclose()
            await broker.publish(FAKE_MODEL, message.body)  # the same body twice, claimed together
            async with sidecar(settings) as runner:
                status = await wait_for_job(client, job["job_id"], finished)
                for _ in range(200):  # the copy is settled once the run ended
                    if await broker.count(FAKE_MODEL) == 0:
                        break
                    await asyncio.sleep(0.05)
                assert await broker.count(FAKE_MODEL) == 0
    assert status["status"] == "succeeded" and status["attempts"] == 1, status
    assert fake_worker.rows_seen == len(ROWS)
    assert jobs_counted(runner, "running") == jobs_counted(runner, "succeeded") == 1


def status_writes(runner: Sidecar) -> list[tuple[str, dict[str, int | None]]]:
    """From now on, the state and progress of every status write ``runner`` makes, in the order it makes them."""
    writes: list[tuple[str, dict[str, int | None]]] = []
    write = runner.records._write

    async def recorded(status: JobStatus, *args: Any, **kwargs: Any) -> bool:
        writes.append((status.status, status.progress.model_dump()))
        return await write(status, *args, **kwargs)

    runner.records._write = recorded  # type: ignore[method-assign]
    return writes


async def test_a_short_job_is_written_once_from_queued_to_succeeded(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client, sidecar(jobs_settings) as runner:
        writes = status_writes(runner)
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS[:1]})).json()
        status = await wait_for_job(client, job["job_id"], finished)
    assert writes == [("succeeded", {"done": 1, "total": 1})]
    assert status["status"] == "succeeded" and status["attempts"] == 1
    assert status["created_at"] <= status["started_at"] <= status["finished_at"]


async def test_a_long_job_shows_running_and_its_progress_before_it_ends(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    fake_worker.delay_s = 0.3
    rows = [{"input_data": [1.0, 1.0, 1.0, float(i)]} for i in range(20)]  # 10 chunks of 2: 1.5 s or more
    async with gateway(jobs_settings) as client, sidecar(jobs_settings) as runner:
        writes = status_writes(runner)
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})).json()
        running = await wait_for_job(client, job["job_id"], lambda s: s["status"] == "running")
        assert running["attempts"] == 1 and running["started_at"] and running["finished_at"] is None
        status = await wait_for_job(client, job["job_id"], finished)
    assert status["status"] == "succeeded" and status["progress"] == {"done": 20, "total": 20}
    states = [state for state, _ in writes]
    assert states[-1] == "succeeded" and set(states[:-1]) == {"running"} and len(states) >= 2, writes
    done = [progress["done"] for _, progress in writes]
    assert done == sorted(done), writes  # no progress write lands after a later one, nor after the end


async def test_cancel_a_queued_job_and_it_never_runs(jobs_settings: JobsSettings, fake_worker: FakeWorker) -> None:
    async with gateway(jobs_settings) as client:
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
        cancelled = await client.delete(f"/jobs/{job['job_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert (await client.delete(f"/jobs/{job['job_id']}")).status_code == 200  # idempotent
        after = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS[:1]})).json()
        async with sidecar(jobs_settings):
            await wait_for_job(client, after["job_id"], finished)  # the queue is drained past the cancelled job
        status = (await client.get(f"/jobs/{job['job_id']}")).json()
        assert status["status"] == "cancelled" and status["started_at"] is None
        assert fake_worker.rows_seen == 1
        assert (await client.get(f"/jobs/{job['job_id']}/result")).status_code == 409


async def test_cancel_a_running_job_stops_it_at_its_next_chunk(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    fake_worker.delay_s = 0.2
    rows = [{"input_data": [1.0, 1.0, 1.0, float(i)]} for i in range(40)]  # 20 chunks of 2
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})).json()
        await wait_for_job(client, job["job_id"], lambda s: s["status"] == "running")
        answer = await client.delete(f"/jobs/{job['job_id']}")
        assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
        status = await wait_for_job(client, job["job_id"], finished)
        assert status["status"] == "cancelled"
        assert status["progress"]["done"] < 40 and fake_worker.rows_seen < 40
        assert (await client.delete(f"/jobs/{job['job_id']}")).status_code == 200


async def test_a_row_the_worker_refuses_fails_the_job_at_once(jobs_settings: JobsSettings) -> None:
    rows = [*ROWS, {"input_data": [-1.0, 0.0, 0.0, 0.0]}]
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})).json()
        status = await wait_for_job(client, job["job_id"], finished)
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"]["code"] == "invalid_input" and "rows 4..5" in status["error"]["message"]


async def test_a_poison_job_is_dead_lettered_and_failed(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        job = (await client.post("/jobs", json={"task": "always_fails", "inputs": ROWS})).json()
        status = await wait_for_job(client, job["job_id"], finished)
        assert status["status"] == "failed", status
        assert status["attempts"] == jobs_settings.job_max_deliveries
        assert status["error"]["code"] == "delivery_limit"
        assert "this task always fails" in status["error"]["message"]
        async with broker_of(jobs_settings) as broker:
            assert await broker.count(FAKE_MODEL) == 0 and await broker.count(FAKE_MODEL, dead=True) == 0


async def test_unknown_job_is_404(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client:
        for path in ("/jobs/0123456789abcdef0123456789abcdef", "/jobs/not-a-job-id", "/jobs/x/result"):
            answer = await client.get(path)
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found", path
        assert (await client.delete("/jobs/0123456789abcdef0123456789abcdef")).status_code == 404


async def test_a_large_result_is_a_redirect_where_the_store_can_sign(jobs_settings: JobsSettings) -> None:
    settings = jobs_settings.model_copy(update={"job_result_redirect_bytes": 10})
    async with gateway(settings) as client, sidecar(settings):
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
        status = await wait_for_job(client, job["job_id"], finished)
        answer = await client.get(status["result_url"])
        if ArtifactStore.from_settings(settings).presigns:
            assert answer.status_code == 307
            answer = await client.get(answer.headers["location"])
        assert answer.status_code == 200 and answer.json()["job_id"] == job["job_id"]


async def test_a_result_request_with_wait_answers_once_the_job_finishes(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
        short = await client.get(f"/jobs/{job_id}/result", params={"wait": "0.2"})
        assert short.status_code == 409 and short.json()["error"]["code"] == "job_not_finished"

        waiting = asyncio.ensure_future(client.get(f"/jobs/{job_id}/result", params={"wait": "30"}))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        async with sidecar(jobs_settings):
            result = await asyncio.wait_for(waiting, 30)
        assert result.status_code == 200, result.text
        assert [row["prediction"] for row in result.json()["output"]] == expected(ROWS)

        for bad in ("-1", "soon", "nan", "inf"):
            answer = await client.get(f"/jobs/{job_id}/result", params={"wait": bad})
            assert answer.status_code == 422 and answer.json()["error"]["message"].startswith("wait")
        missing = await client.get(f"/jobs/{'0' * 32}/result", params={"wait": "5"})
        assert missing.status_code == 404
