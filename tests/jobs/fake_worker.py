"""A stand-in for a worker's /batch_predict, served by uvicorn on a thread.

It answers each row with the sum of its input_data, so a result shows which
row went where; rows whose first value is negative get the worker's 422
envelope. ``delay_s`` slows every call down (to catch a job mid-run),
``rows_seen`` counts the rows it answered and ``calls`` the calls that answered.
"""

from __future__ import annotations

import asyncio
import threading

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support import free_port


class FakeWorker:
    def __init__(self, input_shape: tuple[int, ...] = (4,)) -> None:
        self.input_shape = list(input_shape)  # published in /metadata, as a real worker does
        self.delay_s = 0.0
        self.rows_seen = 0
        self.calls = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[
            Route("/health", self._health),
            Route("/metadata", self._metadata),
            Route("/batch_predict", self._batch_predict, methods=["POST"]),
        ])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="fake-worker", daemon=True)

    async def _health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "model_name": "fake", "model_version": "1",
                             "input_shape": self.input_shape})

    async def _metadata(self, request: Request) -> JSONResponse:
        tensor = {"name": "input_data", "datatype": "FP32", "shape": [-1, *self.input_shape]}
        return JSONResponse({"name": "fake", "version": "1", "inputs": [tensor], "outputs": [], "training": None,
                             "example": {"input_data": [1.0] * self.input_shape[0]}})

    async def _batch_predict(self, request: Request) -> JSONResponse:
        rows = await request.json()
        if any(row["input_data"][0] < 0 for row in rows):
            body = {"error": {"code": "invalid_input", "message": "input_data: negative"}, "request_id": None}
            return JSONResponse(body, 422)
        await asyncio.sleep(self.delay_s)
        self.rows_seen += len(rows)
        self.calls += 1
        return JSONResponse([{"prediction": [sum(row["input_data"])], "worker_id": "fake"} for row in rows])

    def start(self) -> FakeWorker:
        self._thread.start()
        while not self._server.started:  # start-up only
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
