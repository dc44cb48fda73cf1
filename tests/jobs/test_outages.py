"""Broker and store outages: 503 + Retry-After while they are down, every job done once when they are back.

The RabbitMQ here is a node of the test's own (bench/outage_servers.py), never the shared one on :5672;
the S3 server is s3rver, which keeps its objects on disk across a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from bench.outage_servers import RabbitNode, S3Server
from tests.jobs.conftest import dependency_up, embedded_settings, finished, gateway, sidecar, until, wait_for_job
from tests.jobs.fake_worker import FakeWorker
from tests.support import free_port

ROWS = [{"input_data": [1.0, 2.0, 3.0, float(i)]} for i in range(6)]  # 3 chunks of 2


def assert_retry_later(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["code"] == "jobs_unavailable" and answer.json()["request_id"]


async def submit_until_accepted(client: httpx.AsyncClient, body: dict, key: str, timeout_s: float = 60) -> dict:
    """POST /jobs again after each 503's Retry-After, as a client does, with the same Idempotency-Key."""
    async def attempt() -> dict:
        while True:
            answer = await client.post("/jobs", json=body, headers={"Idempotency-Key": key})
            if answer.status_code != 503:
                assert answer.status_code == 202, answer.text
                return answer.json()
            assert_retry_later(answer)
            await asyncio.sleep(float(answer.headers["retry-after"]))

    return await asyncio.wait_for(attempt(), timeout_s)


async def test_a_broker_that_refuses_gets_503_with_retry_after(fake_worker: FakeWorker, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    async with gateway(settings) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS},
                                   headers={"Idempotency-Key": "refused"})
        assert_retry_later(answer)
        listed = (await client.get("/jobs")).json()["jobs"]
    # Recorded, and marked so that the same key queues it again: never accepted and then lost.
    assert [(job["status"], job["error"]["code"]) for job in listed] == [("failed", "not_queued")]


async def test_a_store_that_refuses_gets_503_with_retry_after(fake_worker: FakeWorker, tmp_path: Path) -> None:
    settings = embedded_settings(
        tmp_path, fake_worker.url, s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_bucket="jobs",
        aws_access_key_id="test", aws_secret_access_key="test", job_inline_input_bytes=0,
    )
    async with gateway(settings) as client:
        assert_retry_later(await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS}))
        assert (await client.get("/jobs")).json()["jobs"] == []  # the input is written before the record


async def test_jobs_survive_a_broker_restart(rabbit_node: RabbitNode, fake_worker: FakeWorker,
                                             tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, amqp_url=f"{rabbit_node.url}?reconnect_interval=0.5")
    fake_worker.delay_s = 1.0  # the first job runs for about 2 s: through stop_app
    body = {"task": "batch_predict", "inputs": ROWS}
    async with gateway(settings) as client, sidecar(settings) as runner:
        before = await submit_until_accepted(client, body, "before")
        await wait_for_job(client, before["job_id"], lambda s: s["status"] == "running")
        await asyncio.to_thread(rabbit_node.stop_app)  # the running job's ack will find no connection
        assert_retry_later(await client.post("/jobs", json=body, headers={"Idempotency-Key": "during"}))
        await until(lambda: dependency_up(runner, "broker") == 0)  # the sidecar's /metrics says so
        restart = asyncio.create_task(asyncio.to_thread(rabbit_node.start_app))
        during = await submit_until_accepted(client, body, "during")
        await restart
        await until(lambda: dependency_up(runner, "broker") == 1)
        fake_worker.delay_s = 0.0
        after = await submit_until_accepted(client, body, "after")
        statuses = [await wait_for_job(client, job["job_id"], finished) for job in (before, during, after)]
        results = [(await client.get(status["result_url"])).json() for status in statuses]
    assert [status["status"] for status in statuses] == ["succeeded"] * 3, statuses
    assert len({status["job_id"] for status in statuses}) == 3
    for result in results:
        assert [row["prediction"] for row in result["output"]] == [[sum(r["input_data"])] for r in ROWS]
    # Each job ran once: a redelivery of the one that finished while its ack could not be sent is skipped.
    assert fake_worker.rows_seen == 3 * len(ROWS)


async def test_a_store_restart_delays_jobs_without_spending_their_deliveries(
    s3_server: S3Server, fake_worker: FakeWorker, tmp_path: Path
) -> None:
    settings = embedded_settings(
        tmp_path, fake_worker.url, s3_endpoint_url=s3_server.url, s3_bucket=s3_server.bucket,
        aws_access_key_id=S3Server.ACCESS_KEY, aws_secret_access_key=S3Server.ACCESS_KEY,
        job_inline_input_bytes=0, job_inline_result_bytes=0, sidecar_store_retry_s=30.0,
    )
    body = {"task": "batch_predict", "inputs": ROWS}
    async with gateway(settings) as client:
        queued = await submit_until_accepted(client, body, "queued")  # its rows are an object in the store
        await asyncio.to_thread(s3_server.stop)
        assert_retry_later(await client.post("/jobs", json=body, headers={"Idempotency-Key": "during"}))
        async with sidecar(settings, patient_store=True):
            await wait_for_job(client, queued["job_id"], lambda s: s["status"] == "running")
            await asyncio.sleep(1.0)  # the sidecar is retrying the store meanwhile
            await asyncio.to_thread(s3_server.start)
            during = await submit_until_accepted(client, body, "during")
            statuses = [await wait_for_job(client, job["job_id"], finished) for job in (queued, during)]
        results = [(await client.get(status["result_url"])).json() for status in statuses]
    assert [(status["status"], status["attempts"]) for status in statuses] == [("succeeded", 1)] * 2, statuses
    for result in results:
        assert [row["prediction"] for row in result["output"]] == [[sum(r["input_data"])] for r in ROWS]


async def test_a_broker_that_blocks_publishers_gets_503_in_time(rabbit_node: RabbitNode, fake_worker: FakeWorker,
                                                               tmp_path: Path) -> None:
    """RabbitMQ on a memory alarm keeps the connection open but stops reading what publishers send:
    no error ever comes, so only JOB_PUBLISH_TIMEOUT_S turns the wait into a 503."""
    settings = embedded_settings(tmp_path, fake_worker.url, amqp_url=rabbit_node.url, job_publish_timeout_s=1.0)
    body = {"task": "batch_predict", "inputs": ROWS}
    async with gateway(settings) as client, sidecar(settings):
        before = await submit_until_accepted(client, body, "before")
        await asyncio.to_thread(rabbit_node.ctl, "set_vm_memory_high_watermark", "0.0000001")
        await asyncio.wait_for(alarm_in_effect(rabbit_node), 30)
        assert_retry_later(await asyncio.wait_for(
            client.post("/jobs", json=body, headers={"Idempotency-Key": "during"}), 10))
        await asyncio.to_thread(rabbit_node.ctl, "set_vm_memory_high_watermark", "0.4")
        # The cut-off publish may reach the queue now: its job is marked not_queued, so it is skipped, and the
        # client's retry with the same key queues it again.
        during = await submit_until_accepted(client, body, "during")
        statuses = [await wait_for_job(client, job["job_id"], finished) for job in (before, during)]
        assert before["job_id"] != during["job_id"]
    assert [status["status"] for status in statuses] == ["succeeded"] * 2, statuses
    assert fake_worker.rows_seen == 2 * len(ROWS)  # each job ran once


async def alarm_in_effect(node: RabbitNode) -> None:
    """Until the node reports a memory alarm (it checks its memory about once a second)."""
    while "memory" not in await asyncio.to_thread(node.ctl, "eval", "rabbit_alarm:get_alarms()."):
        await asyncio.sleep(0.2)


async def test_a_result_the_store_will_not_take_is_kept_and_written_when_it_returns(
    s3_server: S3Server, fake_worker: FakeWorker, tmp_path: Path
) -> None:
    """Past SIDECAR_STORE_RETRY_S the result goes to the spool and the job back to the queue (its record says why,
    the embedded broker does not count it); once the store is back the kept result is written, not computed again."""
    settings = embedded_settings(
        tmp_path, fake_worker.url, s3_endpoint_url=s3_server.url, s3_bucket=s3_server.bucket,
        aws_access_key_id=S3Server.ACCESS_KEY, aws_secret_access_key=S3Server.ACCESS_KEY,
        job_inline_result_bytes=0, sidecar_store_retry_s=1.0,
    )
    body = {"task": "batch_predict", "inputs": ROWS}  # rows inline: only the result needs the store
    async with gateway(settings) as client:
        queued = await submit_until_accepted(client, body, "kept")
        await asyncio.to_thread(s3_server.stop)
        async with sidecar(settings, patient_store=True) as runner:
            handed_back = await wait_for_job(
                client, queued["job_id"], lambda s: (s["error"] or {}).get("code") == "dependency_unavailable")
            assert "the artifact store is unavailable; its result is kept" in handed_back["error"]["message"]
            assert runner.spool.holds(queued["job_id"])
            await asyncio.to_thread(s3_server.start)
            done = await wait_for_job(client, queued["job_id"], finished)
        result = (await client.get(done["result_url"])).json()
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None), done
    assert [row["prediction"] for row in result["output"]] == [[sum(r["input_data"])] for r in ROWS]
    assert fake_worker.rows_seen == len(ROWS)  # computed once
    assert not runner.spool.holds(queued["job_id"])
