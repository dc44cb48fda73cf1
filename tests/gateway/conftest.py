"""Fixtures of the gateway tests: a stand-in worker and a real gateway, both served by uvicorn in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.model_headers import model_headers
from gateway.app import create_app
from gateway.http_protocol import limited_http_protocol
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.support import ServedApp, free_port


class StandInWorker:
    """Healthy; /predict echoes the request id it got, waits ``delay_s``, answers ``status``; ``GET /``
    answers unreadably."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.status = 200
        self.requests: list[tuple[str, str]] = []
        app = Starlette(routes=[
            Route("/health", self._health),
            Route("/predict", self._predict, methods=["POST"]),
            Route("/", self._long_header),
        ])
        self._served = ServedApp(app, "stand-in-worker")
        self.port, self.address = self._served.port, self._served.address

    async def _health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "worker_id": "stand-in"})

    async def _predict(self, request: Request) -> JSONResponse:
        self.requests.append((request.method, request.url.path))
        await asyncio.sleep(self.delay_s)
        return JSONResponse({"prediction": [1], "seen_request_id": request.headers.get("x-request-id")}, self.status,
                            headers=model_headers("stand-in model", "7"))

    async def _long_header(self, request: Request) -> Response:
        return Response(b"{}", headers={"x-padding": "p" * 9000}, media_type="application/json")

    def __enter__(self) -> StandInWorker:
        self._served.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.stop()


@pytest.fixture
def worker() -> Iterator[StandInWorker]:
    with StandInWorker() as running:
        yield running


@pytest.fixture
def jobs_settings(tmp_path: Path) -> JobsSettings:
    return JobsSettings(jobs_dir=tmp_path / "jobs")


@contextlib.asynccontextmanager
async def serve_gateway(settings: GatewaySettings, jobs_settings: JobsSettings) -> AsyncIterator[str]:
    """A real gateway on a free port, as ``python -m gateway`` runs it; yields its URL once a worker is healthy."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, jobs_settings), host="127.0.0.1", port=port, log_level="warning",
        http=limited_http_protocol(settings),
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            while not server.started or (await client.get(f"{url}/gateway/health")).status_code != 200:
                await asyncio.sleep(0.02)  # start-up only
        yield url
    finally:
        server.should_exit = True
        await serving


def gateway_settings(worker: StandInWorker, **overrides: object) -> GatewaySettings:
    return GatewaySettings(workers=[worker.address], health_interval_s=0.05, access_log=False, **overrides)
