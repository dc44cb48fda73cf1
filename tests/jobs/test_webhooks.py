"""Webhooks: signed as Standard Webhooks says (checked with the standardwebhooks library), delivered at least once
from the outbox whatever process dies, retried with backoff, and never sent where they may not go."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from jobs.callback_urls import CallbackRefused, resolve
from jobs.housekeeping import Housekeeping
from jobs.metrics import JobsMetrics
from jobs.settings import JobsSettings
from jobs.webhook_signing import secret_key, signed_headers
from jobs.webhooks import WebhookDispatcher
from tests.jobs.conftest import embedded_settings, finished, gateway, sidecar, sidecar_process, until, wait_for_job
from tests.jobs.fake_worker import FakeWorker
from tests.support import free_port

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ROWS = [{"input_data": [1.0, 2.0, 3.0, 4.0]}]


class Receiver:
    """A webhook receiver on loopback: answers ``failures`` requests 500 first (``hang``: holds the first one
    unanswered), then 200; keeps each verified delivery."""

    def __init__(self, failures: int = 0, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang
        self.requests = 0
        self.verified: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, body), 2xx answered ones only
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def hook(self, request: Request) -> Response:
        self.requests += 1
        body = await request.body()
        payload = Webhook(SECRET).verify(body, dict(request.headers))  # raises unless the signature holds
        if self.hang and self.requests == 1:
            await asyncio.sleep(3600)
        if self.requests <= self.failures:
            return Response(status_code=500)
        self.verified.append((request.headers["webhook-id"], payload))
        return Response(status_code=204)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield self
        finally:
            server.should_exit = True
            server.force_exit = True
            await serving


def with_webhooks(settings: JobsSettings, **changes: Any) -> JobsSettings:
    values = {"webhook_secret": SECRET, "webhook_allow_private_networks": True, "webhook_min_backoff_s": 0.1,
              "webhook_poll_s": 0.05, "webhook_timeout_s": 5.0, **changes}
    return JobsSettings(**{**settings.model_dump(), **values})


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    body = orjson.dumps({"type": "job.succeeded", "data": {"job_id": "x"}})
    fresh = signed_headers(secret_key(SECRET), "msg_1", int(time.time()), body)
    assert Webhook(SECRET).verify(body, fresh) == {"type": "job.succeeded", "data": {"job_id": "x"}}
    with pytest.raises(WebhookVerificationError):  # another body under the same signature
        Webhook(SECRET).verify(body + b" ", fresh)


def test_a_secret_not_in_the_standard_format_is_refused() -> None:
    for bad in ("plain", "whsec_", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="whsec_"):
            secret_key(bad)


async def test_a_receiver_that_fails_twice_gets_the_final_state_once(jobs_settings: JobsSettings) -> None:
    settings = with_webhooks(jobs_settings)
    async with Receiver(failures=2).running() as receiver, gateway(settings) as client, sidecar(settings):
        submitted = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                     "callback_url": receiver.url})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        assert submitted.json()["callback"]["url"] == receiver.url
        await wait_for_job(client, job_id, finished)
        await until(lambda: len(receiver.verified) == 1)
        status = await wait_for_job(client, job_id, lambda s: s["callback"]["state"] == "delivered")
        await asyncio.sleep(0.3)  # nothing more comes
    assert receiver.requests == 3 and len(receiver.verified) == 1
    webhook_id, payload = receiver.verified[0]
    assert webhook_id.startswith(f"msg_{job_id}_")
    assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == job_id
    assert payload["data"]["status"] == "succeeded" and payload["data"]["progress"] == {"done": 1, "total": 1}
    assert status["callback"] == {"url": receiver.url, "events": ["succeeded", "failed", "cancelled", "expired"],
                                  "attempts": 3, "last_status": 204, "delivered_at": status["callback"]["delivered_at"],
                                  "state": "delivered"}


async def test_every_state_asked_for_and_each_once(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = with_webhooks(embedded_settings(tmp_path, fake_worker.url))
    async with Receiver().running() as receiver, gateway(settings) as client, sidecar(settings):
        body = {"task": "batch_predict", "inputs": ROWS, "callback_url": receiver.url,
                "callback_events": ["queued", "succeeded"]}
        job_id = (await client.post("/jobs", json=body)).json()["job_id"]
        await until(lambda: len(receiver.verified) == 2)
    assert sorted(payload["type"] for _, payload in receiver.verified) == ["job.queued", "job.succeeded"]
    assert len({webhook_id for webhook_id, _ in receiver.verified}) == 2
    assert {payload["data"]["job_id"] for _, payload in receiver.verified} == {job_id}


async def test_a_change_no_dispatcher_saw_is_delivered_once_one_runs(jobs_settings: JobsSettings) -> None:
    """The gateway cancels a queued job (it runs no dispatcher): the outbox keeps the webhook for a sidecar."""
    settings = with_webhooks(jobs_settings)
    async with Receiver().running() as receiver, gateway(settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                   "callback_url": receiver.url})).json()["job_id"]
        assert (await client.delete(f"/jobs/{job_id}")).json()["status"] == "cancelled"
        await asyncio.sleep(0.3)
        assert receiver.requests == 0
        assert (await client.get(f"/jobs/{job_id}")).json()["callback"]["state"] == "pending"
        async with sidecar(settings):
            await until(lambda: len(receiver.verified) == 1)
    assert receiver.verified[0][1]["type"] == "job.cancelled"


async def test_a_sidecar_killed_mid_delivery_loses_no_webhook(tmp_path: Path, fake_worker: FakeWorker) -> None:
    """The first sidecar dies (SIGKILL) while its delivery hangs; once its lease runs out another delivers it, under
    the same webhook-id."""
    settings = with_webhooks(embedded_settings(tmp_path, fake_worker.url), webhook_lease_s=6.0,
                             webhook_timeout_s=5.0)
    async with Receiver(hang=True).running() as receiver, gateway(settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                   "callback_url": receiver.url})).json()["job_id"]
        process = sidecar_process(settings, tmp_path / "sidecar.log")
        try:
            await until(lambda: receiver.requests == 1, timeout_s=60)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "succeeded"
        async with sidecar(settings):
            await until(lambda: len(receiver.verified) == 1, timeout_s=30)
    assert receiver.requests == 2
    assert receiver.verified[0][0].startswith(f"msg_{job_id}_")


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:9/hook", "loopback, private"),
    ("http://169.254.169.254/latest/meta-data", "loopback, private"),
    ("http://10.1.2.3/hook", "loopback, private"),
    ("http://[::1]/hook", "loopback, private"),
    ("ftp://example.com/hook", "only http:// and https://"),
    ("not a url", "only http:// and https://"),
])
async def test_callback_urls_that_webhooks_may_not_go_to_are_422(
    tmp_path: Path, fake_worker: FakeWorker, url: str, reason: str,
) -> None:
    settings = with_webhooks(embedded_settings(tmp_path, fake_worker.url), webhook_allow_private_networks=False)
    async with gateway(settings) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS, "callback_url": url})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["message"].startswith("callback_url: ")
        assert reason in answer.json()["error"]["message"]
        assert (await client.get("/jobs")).json()["jobs"] == []


async def test_without_a_secret_callbacks_are_refused(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url)) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                  "callback_url": "https://example.com/hook"})
        assert answer.status_code == 422 and "WEBHOOK_SECRET" in answer.json()["error"]["message"]


async def test_delivery_checks_the_address_again() -> None:
    with pytest.raises(CallbackRefused, match="loopback"):
        await resolve("http://localhost:8080/hook", allow_private=False, timeout_s=2.0)
    destination = await resolve("http://localhost:8080/hook?x=1", allow_private=True, timeout_s=2.0)
    assert destination.request_url() in ("http://127.0.0.1:8080/hook?x=1", "http://[::1]:8080/hook?x=1")


async def test_a_webhook_no_one_accepts_is_given_up_after_webhook_retry_s(
    tmp_path: Path, fake_worker: FakeWorker,
) -> None:
    settings = with_webhooks(embedded_settings(tmp_path, fake_worker.url), webhook_retry_s=1.0)
    async with Receiver(failures=1000).running() as receiver, gateway(settings) as client, sidecar(settings) as runner:
        bad_row = [{"input_data": [-1.0, 2.0, 3.0, 4.0]}]  # the worker refuses it: the job fails
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": bad_row,
                                                   "callback_url": receiver.url})).json()["job_id"]
        status = await wait_for_job(client, job_id, lambda s: s["callback"]["state"] == "failed")
    assert status["status"] == "failed"
    assert status["callback"]["last_status"] == 500 and status["callback"]["attempts"] == receiver.requests >= 2
    assert runner.metrics.registry.get_sample_value("jobs_webhooks_total", {"outcome": "failed"}) == 1


class EndlessBodyReceiver(Receiver):
    """Accepts each delivery (200) and then streams an answer that never ends."""

    async def hook(self, request: Request) -> Response:
        self.requests += 1
        self.verified.append((request.headers["webhook-id"], Webhook(SECRET).verify(await request.body(),
                                                                                   dict(request.headers))))

        async def endless() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)

        return StreamingResponse(endless(), status_code=200)


async def test_a_receiver_answering_without_end_is_delivered_on_its_status(jobs_settings: JobsSettings) -> None:
    """Only the status is read: an endless answer costs neither memory nor the slot."""
    settings = with_webhooks(jobs_settings, webhook_timeout_s=2.0)
    async with EndlessBodyReceiver().running() as receiver, gateway(settings) as client, sidecar(settings):
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                   "callback_url": receiver.url})).json()["job_id"]
        status = await wait_for_job(client, job_id, lambda s: s["callback"]["state"] == "delivered")
    assert status["callback"]["attempts"] == 1 and status["callback"]["last_status"] == 200


@contextlib.asynccontextmanager
async def trickling_receiver() -> AsyncIterator[tuple[str, list[int]]]:
    """A receiver that reads each request and then sends its status line a byte at a time, every 0.1 s, forever:
    no single read waits long, so only an overall deadline ends it. Yields its URL and a count of connections."""
    connections = [0]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"H")
                await writer.drain()
                await asyncio.sleep(0.1)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", connections
    finally:
        server.close()


async def test_a_receiver_trickling_its_answer_is_cut_off_at_webhook_timeout_s(jobs_settings: JobsSettings) -> None:
    settings = with_webhooks(jobs_settings, webhook_timeout_s=0.5, webhook_retry_s=2.0)
    async with trickling_receiver() as (url, connections), gateway(settings) as client, sidecar(settings):
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                   "callback_url": url})).json()["job_id"]
        status = await wait_for_job(client, job_id, lambda s: s["callback"]["state"] == "failed")
    assert status["callback"]["last_status"] is None
    assert status["callback"]["attempts"] == connections[0] >= 2


class BrokenOnce:
    """Stands in for the outbox's claim or housekeeping's lease: raises a bug's exception at the first call only."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self, *_: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug")
        return self.answer


async def test_the_background_loops_outlive_an_unexpected_error(tmp_path: Path) -> None:
    """Not only a database outage: any error skips a round of the dispatcher and of housekeeping, never ends them."""
    settings = embedded_settings(tmp_path, "http://127.0.0.1:1", webhook_poll_s=0.02, job_housekeeping_s=0.02)
    metrics = JobsMetrics(CollectorRegistry())
    claim, lease = BrokenOnce([]), BrokenOnce(False)
    outbox = SimpleNamespace(claim=claim)
    dispatcher = WebhookDispatcher(settings, None, outbox, metrics, "test")  # type: ignore[arg-type]
    housekeeping = Housekeeping(settings, None, None, metrics, "test")  # type: ignore[arg-type]
    housekeeping.hold_lease = lease  # type: ignore[method-assign]
    loops = [asyncio.create_task(dispatcher.run()), asyncio.create_task(housekeeping.run())]
    try:
        await until(lambda: claim.calls >= 3 and lease.calls >= 3)
        assert not any(loop.done() for loop in loops)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
