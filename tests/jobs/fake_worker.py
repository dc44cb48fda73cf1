"""A stand-in for a worker's /batch_predict, served by uvicorn on a thread.

It answers each row with the sum of its input_data, so a result shows which
row went where; rows whose first value is negative get the worker's 422
envelope. It serves model ``model_name`` version ``model_version`` (in /health,
/metadata and, as a real worker does, in every answer's headers): change them to
play a worker restarted with another model, or hot-swapped to another version. ``canary_versions`` set,
its /batch_predict answers name these versions in turn (a canary taking some requests).
``delay_s`` slows every call down (to catch a job mid-run),
``rows_seen`` counts the rows it answered and ``calls`` the calls that answered; ``failures`` is how many
calls from now on get a 503 (a worker overloaded or restarting).
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.model_headers import model_headers
from tests.support import ServedApp

FAKE_MODEL = "fake"


class FakeWorker:
    def __init__(self, input_shape: tuple[int, ...] = (4,)) -> None:
        self.input_shape = list(input_shape)  # published in /metadata, as a real worker does
        self.model_name, self.model_version = FAKE_MODEL, "1"
        self.canary_versions: list[str] = []
        self.delay_s = 0.0
        self.rows_seen = 0
        self.calls = 0
        self.failures = 0
        app = Starlette(routes=[
            Route("/health", self._health),
            Route("/metadata", self._metadata),
            Route("/batch_predict", self._batch_predict, methods=["POST"]),
        ])
        self._served = ServedApp(app, "fake-worker")
        self.port, self.url = self._served.port, f"http://{self._served.address}"

    async def _health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "model_name": self.model_name, "model_version": self.model_version,
                             "input_shape": self.input_shape}, headers=self._identity())

    def _identity(self) -> dict[str, str]:
        return model_headers(self.model_name, self.model_version)

    def _answering_identity(self) -> dict[str, str]:
        """The headers of a /batch_predict answer: the next canary version when there are any."""
        if not self.canary_versions:
            return self._identity()
        return model_headers(self.model_name, self.canary_versions[self.calls % len(self.canary_versions)])

    async def _metadata(self, request: Request) -> JSONResponse:
        tensor = {"name": "input_data", "datatype": "FP32", "shape": [-1, *self.input_shape]}
        return JSONResponse({"name": self.model_name, "version": self.model_version, "inputs": [tensor], "outputs": [],
                             "training": None, "example": {"input_data": [1.0] * self.input_shape[0]}},
                            headers=self._identity())

    async def _batch_predict(self, request: Request) -> JSONResponse:
        rows = await request.json()
        if self.failures > 0:
            self.failures -= 1
            body = {"error": {"code": "unavailable", "message": "overloaded"}, "request_id": None}
            return JSONResponse(body, 503, headers=self._identity())
        if any(row["input_data"][0] < 0 for row in rows):
            body = {"error": {"code": "invalid_input", "message": "input_data: negative"}, "request_id": None}
            return JSONResponse(body, 422, headers=self._identity())
        await asyncio.sleep(self.delay_s)
        headers = self._answering_identity()
        self.rows_seen += len(rows)
        self.calls += 1
        answers = [{"prediction": [sum(row["input_data"])], "worker_id": "fake"} for row in rows]
        return JSONResponse(answers, headers=headers)

    def start(self) -> FakeWorker:
        self._served.start()
        return self

    def stop(self) -> None:
        self._served.stop()
