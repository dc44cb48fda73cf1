"""Gateway-side batching with a fake forward: when rows go, how they are gathered, and what each gets back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import uvicorn

from common.forwarder import UpstreamResponse
from gateway.backends import BackendPool
from gateway.errors import Overloaded, UpstreamTimeout
from gateway.metrics import GatewayMetrics
from gateway.row_batching import RowBatcher, RowSpec, decode_answers
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.fakes import GridModel, SumModel, metadata_of
from tests.gateway.conftest import gateway_settings, serve_gateway
from tests.support import free_port
from tests.worker.test_app import FakeRuntime
from worker.app import create_app as create_worker_app
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

JSON = {"content-type": "application/json"}


def row_body(*values: float, **options: Any) -> bytes:
    return orjson.dumps({"input_data": list(values), **options})


class FakeWorkers:
    """Stands in for the proxy's forward: records each call; the first ``hold`` calls wait for ``release``.

    /predict answers ``{"total": sum}``, /batch_predict a list of them, both as the worker does; ``status``
    overrides the batch's answer.
    """

    def __init__(self, hold: int = 0) -> None:
        self.calls: list[tuple[str, bytes, dict[str, str], float | None]] = []
        self.least_outstanding: list[bool] = []
        self.release = asyncio.Event()
        self.hold = hold
        self.batch_status = 200
        self.raise_on_batch: Exception | None = None

    async def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes, state: dict,
        deadline: float | None = None, requests: int = 1, least_outstanding: bool = False,
    ) -> UpstreamResponse:
        assert requests == (len(orjson.loads(body)) if path == "/batch_predict" else 1)
        self.least_outstanding.append(least_outstanding)
        self.calls.append((path, body, headers, deadline))
        state["backend"], state["attempts"] = "http://fake", 1
        if len(self.calls) <= self.hold:
            await self.release.wait()
        if path == "/predict":
            try:
                items = orjson.loads(body)
            except orjson.JSONDecodeError:
                items = None
            if not isinstance(items, dict) or len(items.get("input_data", [])) != 4:
                return UpstreamResponse(422, JSON, b'{"error": "bad row"}')
            return UpstreamResponse(200, JSON, orjson.dumps({"total": sum(items["input_data"])}))
        items = orjson.loads(body)
        if self.raise_on_batch is not None:
            raise self.raise_on_batch
        if self.batch_status != 200:
            error = {"error": {"code": "x", "message": "refused"}, "request_id": headers["x-request-id"]}
            return UpstreamResponse(self.batch_status, JSON, orjson.dumps(error))
        return UpstreamResponse(200, JSON, orjson.dumps([{"total": sum(i["input_data"])} for i in items]))

    def paths(self) -> list[str]:
        return [path for path, *_ in self.calls]


def healthy_pool(workers: int = 1, model: type = SumModel) -> BackendPool:
    pool = BackendPool(max_in_flight=256)
    pool.replace([(f"http://w{i}", f"w{i}") for i in range(workers)])
    for backend in pool.backends:
        backend.record_probe(True)
        backend.metadata = metadata_of(model)
    return pool


def batcher(fake: FakeWorkers, pool: BackendPool | None = None, **settings: Any) -> tuple[RowBatcher, GatewayMetrics]:
    metrics = GatewayMetrics()
    return RowBatcher(fake.forward, pool or healthy_pool(), metrics, GatewaySettings(**settings)), metrics


async def settle() -> None:
    """Let every ready task run until it waits (the rows join the queue; no timing involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


def predict(rows: RowBatcher, body: bytes, request_id: str, state: dict | None = None) -> asyncio.Task:
    return asyncio.create_task(rows.predict({"content-type": "application/json", "x-request-id": request_id},
                                            body, {} if state is None else state))


async def test_a_lone_row_goes_at_once_as_the_predict_it_is() -> None:
    fake = FakeWorkers()
    rows, metrics = batcher(fake)
    body = b'{"input_data": [1, 2, 3, 4]}'
    answer = await rows.predict({"x-request-id": "a"}, body, {})
    assert answer.status == 200 and orjson.loads(answer.body) == {"total": 10}
    assert fake.calls == [("/predict", body, {"x-request-id": "a"}, None)]
    assert fake.least_outstanding == [True]  # the batcher's calls spread over the workers
    assert metrics.batched_calls._value.get() == 0


async def test_a_lone_body_goes_as_sent_without_being_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone, a request goes as it is whatever it holds (the worker answers a bad one): parsing it would be waste."""
    def parsed(self: RowSpec, body: bytes) -> None:
        raise AssertionError("a lone row was parsed")

    monkeypatch.setattr(RowSpec, "plain_row", parsed)
    fake = FakeWorkers()
    rows, _ = batcher(fake)
    for body in (b'{"input_data": [1, 2, 3, 4]}', b'{"input_data": [1, 2, 3]'):
        await rows.predict({"x-request-id": "a"}, body, {})
    assert [call[:2] for call in fake.calls] == [("/predict", b'{"input_data": [1, 2, 3, 4]}'),
                                                 ("/predict", b'{"input_data": [1, 2, 3]')]
    assert fake.least_outstanding == [True, True]


async def test_rows_that_arrive_while_a_call_is_in_flight_leave_together() -> None:
    fake = FakeWorkers(hold=1)
    rows, metrics = batcher(fake)
    first = predict(rows, row_body(1, 1, 1, 1), "first")
    await settle()
    states = [{} for _ in range(3)]
    waiting = [predict(rows, row_body(i, 0, 0, 0, return_probabilities=i == 1), f"r{i}", states[i])
               for i in range(3)]
    await settle()
    assert fake.paths() == ["/predict"]  # the others wait for the call in flight
    fake.release.set()
    answers = await asyncio.gather(first, *waiting)
    assert [orjson.loads(a.body) for a in answers] == [{"total": 4}, {"total": 0}, {"total": 1}, {"total": 2}]
    assert all(a.status == 200 and a.headers == JSON for a in answers)
    assert fake.paths() == ["/predict", "/batch_predict"]
    path, body, headers, deadline = fake.calls[1]
    assert orjson.loads(body) == [orjson.loads(row_body(i, 0, 0, 0, return_probabilities=i == 1)) for i in range(3)]
    assert headers == {"content-type": "application/json", "x-request-id": "r0"} and deadline is not None
    assert states[2] == {"backend": "http://fake", "attempts": 1}
    assert metrics.batched_calls._value.get() == 1
    assert metrics.batch_waiting_rows._value.get() == 0


async def test_a_batch_holds_at_most_the_configured_rows() -> None:
    fake = FakeWorkers(hold=1)
    rows, _ = batcher(fake, gateway_max_batch_rows=2)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(6)]
    await settle()
    fake.release.set()
    answers = await asyncio.gather(*tasks)
    assert [orjson.loads(a.body)["total"] for a in answers] == [0, 1, 2, 3, 4, 5]
    sizes = [len(orjson.loads(body)) for path, body, *_ in fake.calls if path == "/batch_predict"]
    assert sizes == [2, 2] and fake.paths().count("/predict") == 2  # the first, alone; the last, alone


async def test_calls_per_worker_scale_with_the_healthy_workers() -> None:
    fake = FakeWorkers(hold=3)
    rows, _ = batcher(fake, pool=healthy_pool(workers=2), gateway_batch_calls_per_worker=1, gateway_batch_min_rows=1)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(3)]
    await settle()
    assert fake.paths() == ["/predict", "/predict"]  # two workers: two calls in flight, the third row waits
    fake.release.set()
    await asyncio.gather(*tasks)


async def test_another_worker_gets_a_call_only_once_enough_rows_wait() -> None:
    fake = FakeWorkers(hold=2)
    rows, _ = batcher(fake, pool=healthy_pool(workers=2), gateway_batch_min_rows=3, gateway_batch_hold_ms=60_000)
    first = predict(rows, row_body(9, 0, 0, 0), "first")
    await settle()
    assert fake.paths() == ["/predict"]  # nothing in flight: a lone row goes at once, with a second worker too
    held = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(2)]
    await settle()
    assert fake.paths() == ["/predict"]  # a worker is free, but two rows are too few for a call of their own
    third = predict(rows, row_body(2, 0, 0, 0), "r2")
    await settle()
    assert fake.paths() == ["/predict", "/batch_predict"] and len(orjson.loads(fake.calls[1][1])) == 3
    fake.release.set()
    answers = await asyncio.gather(first, *held, third)
    assert [orjson.loads(a.body)["total"] for a in answers] == [9, 0, 1, 2]


async def test_held_rows_leave_when_the_call_in_flight_comes_back() -> None:
    fake = FakeWorkers(hold=1)
    rows, _ = batcher(fake, pool=healthy_pool(workers=2), gateway_batch_min_rows=64, gateway_batch_hold_ms=60_000)
    first = predict(rows, row_body(9, 0, 0, 0), "first")
    await settle()
    held = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(2)]
    await settle()
    assert fake.paths() == ["/predict"]
    fake.release.set()
    answers = await asyncio.gather(first, *held)
    assert [orjson.loads(a.body)["total"] for a in answers] == [9, 0, 1]
    assert fake.paths() == ["/predict", "/batch_predict"]


async def test_a_held_row_goes_to_a_free_worker_once_it_waited_the_hold() -> None:
    fake = FakeWorkers(hold=1)  # the first call does not come back (a hung worker) until released
    rows, _ = batcher(fake, pool=healthy_pool(workers=2), gateway_batch_min_rows=64, gateway_batch_hold_ms=1)
    first = predict(rows, row_body(9, 0, 0, 0), "first")
    await settle()
    late = await asyncio.wait_for(predict(rows, row_body(2, 0, 0, 0), "late"), timeout=10)
    assert orjson.loads(late.body) == {"total": 2} and fake.paths() == ["/predict", "/predict"]
    assert not first.done()
    fake.release.set()
    await first


@pytest.mark.parametrize("body", [
    b'{"input_data": [1, 2, 3]}',  # wrong shape
    b'{"input_data": [1, 2, 3, true]}',  # a boolean
    b'{"input_data": [1, 2, 3, 4], "extra": 1}',  # an unknown field
    b'{"input_data": [1, 2, 3, 4], "return_probabilities": 1}',
    b'{"input_data": [1, 2, 3, NaN]}',  # not JSON for orjson
    b'{"input_data": [1, 2, 3, 1e39]}',  # beyond float32
    b'[{"input_data": [1, 2, 3, 4]}]',
])
async def test_a_row_that_is_not_plain_goes_alone_and_unchanged(body: bytes) -> None:
    fake = FakeWorkers(hold=1)
    rows, _ = batcher(fake)
    first = predict(rows, row_body(1, 2, 3, 4), "first")
    await settle()
    odd = predict(rows, body, "odd")
    await settle()
    assert fake.calls[1][:2] == ("/predict", body)  # not held back by the call in flight
    assert fake.least_outstanding == [True, False]  # an ordinary request: the configured balancer
    fake.release.set()
    await asyncio.gather(first, odd)


def test_the_row_spec_follows_the_metadata() -> None:
    grid = RowSpec.from_metadata(metadata_of(GridModel))
    assert grid is not None and grid.shape == (2, 3)
    assert grid.plain_row(b'{"input_data": [[1, 2, 3], [4, 5.5, -6]]}') is not None
    assert grid.plain_row(b'{"input_data": [[1, 2, 3], [4, 5]]}') is None
    assert grid.plain_row(b'{"input_data": [1, 2, 3, 4, 5, 6]}') is None
    metadata = metadata_of(SumModel)
    metadata["inputs"][0] |= {"datatype": "UINT8", "shape": [-1]}
    scalar = RowSpec.from_metadata(metadata)
    assert scalar is not None
    assert scalar.plain_row(b'{"input_data": 255}') is not None
    assert scalar.plain_row(b'{"input_data": 256}') is None
    assert scalar.plain_row(b'{"input_data": 1.5}') is None
    metadata["inputs"][0]["datatype"] = "BYTES"
    assert RowSpec.from_metadata(metadata) is None


async def test_a_batch_the_worker_refuses_is_sent_again_row_by_row() -> None:
    fake = FakeWorkers(hold=1)
    fake.batch_status = 422
    rows, metrics = batcher(fake)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(3)]
    await settle()
    fake.release.set()
    answers = await asyncio.gather(*tasks)
    assert [orjson.loads(a.body)["total"] for a in answers] == [0, 1, 2]
    assert fake.paths() == ["/predict", "/batch_predict", "/predict", "/predict"]
    assert [headers["x-request-id"] for path, _, headers, _ in fake.calls[2:]] == ["r1", "r2"]
    assert metrics.batch_fallbacks.labels("422")._value.get() == 1


async def test_a_busy_worker_is_every_rows_answer_with_its_own_request_id() -> None:
    fake = FakeWorkers(hold=1)
    fake.batch_status = 503
    rows, _ = batcher(fake)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(3)]
    await settle()
    fake.release.set()
    _, *busy = await asyncio.gather(*tasks)
    assert [(a.status, orjson.loads(a.body)["request_id"]) for a in busy] == [(503, "r1"), (503, "r2")]
    assert fake.paths() == ["/predict", "/batch_predict"]


async def test_a_gateway_error_on_the_batch_is_each_rows_error() -> None:
    fake = FakeWorkers(hold=1)
    fake.raise_on_batch = UpstreamTimeout("no answer within 30.0s")
    rows, _ = batcher(fake)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(3)]
    await settle()
    fake.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0].status == 200
    assert [type(r) for r in results[1:]] == [UpstreamTimeout, UpstreamTimeout]


async def test_waiting_rows_are_bounded() -> None:
    fake = FakeWorkers(hold=1)
    rows, _ = batcher(fake, max_in_flight_per_worker=2, max_connections_per_worker=2)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(4)]
    await settle()
    fake.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["UpstreamResponse", "UpstreamResponse", "UpstreamResponse",
                                                   "Overloaded"]
    assert isinstance(results[3], Overloaded) and "limit is 2" in results[3].message


async def test_a_row_whose_request_was_cancelled_is_left_out() -> None:
    fake = FakeWorkers(hold=1)
    rows, _ = batcher(fake)
    tasks = [predict(rows, row_body(i, 0, 0, 0), f"r{i}") for i in range(4)]
    await settle()
    tasks[2].cancel()
    fake.release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert [len(orjson.loads(body)) for path, body, *_ in fake.calls if path == "/batch_predict"] == [2]


def test_an_answer_of_the_wrong_length_is_not_split() -> None:
    answer = UpstreamResponse(200, JSON, b'[{"a": 1.5, "b": [1, 2]}, {"a": 2}]')
    assert decode_answers(answer, 2) == [b'{"a":1.5,"b":[1,2]}', b'{"a":2}']
    assert decode_answers(answer, 3) is None
    assert decode_answers(UpstreamResponse(200, JSON, b'{"a": 1}'), 1) is None


class GatedRuntime(FakeRuntime):
    """The worker tests' summing runtime; while ``open`` is clear, a model call waits (``entered`` tells)."""

    def __init__(self) -> None:
        super().__init__()
        self.warm.set()
        self.open, self.entered = threading.Event(), threading.Event()
        self.open.set()

    def infer(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.open.wait(10)
        return super().infer(rows)


class RealWorker:
    """The worker's own app on a gated fake runtime, served by uvicorn in a thread."""

    def __init__(self) -> None:
        self.runtime = GatedRuntime()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        settings = WorkerSettings(worker_id="w1")
        app = create_worker_app(settings, self.runtime, WorkerMetrics(settings.max_batch_size))
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="worker", daemon=True)

    def __enter__(self) -> RealWorker:
        self._thread.start()
        for _ in range(500):  # start-up only
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.address}/health").status_code == 200:
                    return self
            threading.Event().wait(0.02)
        raise AssertionError("the worker never became ready")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def metric(text: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


def comparable(response: httpx.Response) -> tuple:
    """What a client sees, but the time the model took (each call's own)."""
    body = response.json()
    if isinstance(body, dict):
        body.pop("inference_time_ms", None)
    return response.status_code, response.headers["content-type"], response.headers.get("x-request-id"), body


PLAIN = [{"input_data": [i, 1.5, -2, 3e-3]} for i in range(5)] + [
    {"input_data": [9, 9, 9, 9], "return_probabilities": True}]


@pytest.mark.parametrize(("odd_rows", "fallbacks"), [
    ([{"input_data": [1, 2, 3]}], 0),  # a wrong shape goes alone: the batch is the others
    ([{"input_data": [3e38, 3e38, 0, 0]}], 1),  # the sum is inf in float32: the batch is 422, then row by row
])
async def test_batched_answers_are_the_workers_own_predict_answers(
    jobs_settings: JobsSettings, odd_rows: list[dict], fallbacks: int,
) -> None:
    bodies = [orjson.dumps(row) for row in [*PLAIN, *odd_rows]]
    with RealWorker() as worker:
        runtime = worker.runtime
        async with serve_gateway(gateway_settings(worker, gateway_batching=True), jobs_settings) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as client:

            def post(i: int) -> asyncio.Task:
                headers = {"content-type": "application/json", "x-request-id": f"row-{i}"}
                return asyncio.create_task(client.post("/predict", content=bodies[i], headers=headers))

            runtime.open.clear()
            runtime.entered.clear()
            first = post(0)
            await asyncio.to_thread(runtime.entered.wait, 10)  # the first row is in the model: the rest must wait
            rest = [post(i) for i in range(1, len(bodies))]
            gathered = len(bodies) - 1 - (0 if fallbacks else len(odd_rows))

            async def rows_waiting() -> None:
                while metric((await client.get("/metrics")).text, "gateway_batch_waiting_rows") < gathered:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(rows_waiting(), 10)
            runtime.open.set()
            through_gateway = await asyncio.gather(first, *rest)
            metrics = (await client.get("/metrics")).text
        async with httpx.AsyncClient(base_url=f"http://{worker.address}", timeout=30) as direct:
            from_worker = [await direct.post("/predict", content=body, headers={
                "content-type": "application/json", "x-request-id": f"row-{i}"}) for i, body in enumerate(bodies)]
    assert [comparable(r) for r in through_gateway] == [comparable(r) for r in from_worker]
    assert [r.status_code for r in through_gateway] == [200] * len(PLAIN) + [422] * len(odd_rows)
    assert metric(metrics, "gateway_batched_calls_total") == 1
    assert metric(metrics, 'gateway_batch_fallbacks_total{status="422"}') == fallbacks
    # The first row went at once (not counted); the rest, gathered, in one call.
    assert metric(metrics, "gateway_batch_rows_sum") == gathered
