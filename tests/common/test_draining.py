"""The drain: readiness turns 503 "draining" and answers ask clients to close, while requests are still served."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from common.draining import CloseWhileDraining, Drain
from gateway.app import create_app
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings


def test_answers_ask_to_close_only_while_draining() -> None:
    drain = Drain()
    app = CloseWhileDraining(Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))]), drain)
    with TestClient(app) as client:
        assert "connection" not in client.get("/").headers
        drain.active = True
        response = client.get("/")
    assert response.status_code == 200 and response.headers["connection"] == "close"


def test_the_gateway_health_says_draining(tmp_path) -> None:
    drain = Drain()
    settings = GatewaySettings(workers=["127.0.0.1:9"], health_timeout_s=0.2, access_log=False)
    with TestClient(create_app(settings, JobsSettings(jobs_dir=tmp_path), drain=drain)) as client:
        drain.active = True
        response = client.get("/gateway/health")
    assert response.status_code == 503 and response.json()["status"] == "draining"
