"""The worker's HTTP API: parse and validate, hand rows to the batcher, answer.

The app is built by :func:`create_app` from settings and a runtime-like object
(``infer``, ``load_and_warm_up``, ``model``, ``device``), so tests can run it
with a fake runtime and no JAX.

Start-up runs in the background: load, check, compile, then the example row
end to end. Until it is done ``/health`` answers 503 ``loading``; if it fails,
the traceback goes to the log, ``/health`` answers 503 ``failed`` with the
error, and ``on_failure(error)`` is called (the entry point then exits non-zero).

Once started, the worker serves its start artifacts as the contract's version;
a gateway may then send it other versions and switch between them
(worker/versions.py, worker/admin_routes.py). Every answer names the version
that computed it (``X-Model-Version``), and ``/health`` says what serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from common import binary_rows
from common.draining import Drain
from common.model_headers import model_headers
from worker.admin_routes import admin_routes
from worker.batcher import Batcher, Target
from worker.contract import Model, TensorSpec, model_import_path
from worker.errors import NotReady, StartFailed, WorkerError
from worker.hot_routes import REQUEST_ID_HEADER, HotRoutes, PredictionRoute, read_body
from worker.metadata import build_metadata
from worker.metrics import WorkerMetrics
from worker.predictor import Predictor
from worker.protocol_routes import protocol_routes
from worker.responses import error_response, json_response, protocol_error
from worker.settings import WorkerSettings
from worker.versions import Versions

log = logging.getLogger(__name__)
BINARY_ROWS = binary_rows.CONTENT_TYPE.encode()


class Runtime(Protocol):
    """worker/runtime.py's ModelRuntime; loading other versions also needs what worker/versions.py names."""

    model: Model
    device: str

    def load_and_warm_up(self) -> tuple[TensorSpec, ...]: ...
    def infer(self, rows: np.ndarray) -> dict[str, np.ndarray]: ...


class ServingState:
    """Where start-up is: loading, ready (with the predictor and metadata) or failed (with why); the versions."""

    def __init__(self, versions: Versions) -> None:
        self.versions = versions
        self.status = "loading"
        self.error: str | None = None
        self.predictor: Predictor | None = None
        self.metadata: dict[str, Any] | None = None

    def require_ready(self) -> Predictor:
        if self.predictor is None:
            if self.status == "failed":
                raise StartFailed(f"the model failed to start: {self.error}")
            raise NotReady("the model is still loading or compiling")
        return self.predictor


def create_app(
    settings: WorkerSettings, runtime: Runtime, metrics: WorkerMetrics,
    on_failure: Callable[[Exception], None] | None = None, drain: Drain | None = None,
) -> ASGIApp:
    """``drain``: while it is active (after SIGTERM), /health answers 503 "draining"; requests are still served."""
    model = runtime.model
    drain = drain or Drain()
    batcher = Batcher(
        runtime.infer,
        max_batch_size=settings.max_batch_size,
        timeout_s=settings.batch_timeout_ms / 1000,
        max_queue_rows=settings.max_queue_rows,
        metrics=metrics,
    )
    versions = Versions(runtime, batcher, str(model.version), settings.model_artifacts,
                        settings.worker_versions_dir)
    state = ServingState(versions)

    async def start_model() -> None:
        try:
            outputs = await asyncio.to_thread(runtime.load_and_warm_up)
            predictor = Predictor(model, outputs, batcher, worker_id=settings.worker_id,
                                  max_rows_per_request=settings.max_rows_per_request)
            start_target = Target(runtime.infer, versions.active)
            await predictor.check_example(start_target)
            metadata = build_metadata(model, outputs, model_import_path(type(model)))
        except Exception as exc:
            log.exception("model %s failed to start", model.name)
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            if on_failure is not None:
                on_failure(exc)
            return
        versions.started(predictor, start_target)
        state.predictor, state.metadata, state.status = predictor, metadata, "healthy"
        metrics.ready.set(1)
        log.info("worker %s ready", settings.worker_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        start_task = asyncio.create_task(start_model())
        try:
            yield
        finally:
            start_task.cancel()
            await batcher.stop()
            versions.close()

    def active_version() -> str:
        return versions.active

    def handler(route: str, fn: Callable[[Request], Awaitable[Response]]):
        async def endpoint(request: Request) -> Response:
            request_id = request.headers.get(REQUEST_ID_HEADER)
            started = time.perf_counter()
            try:
                response = await fn(request)
            except WorkerError as exc:
                response = error_response(exc, request_id)
            except Exception:
                log.exception("unexpected error on %s", route)
                response = error_response(WorkerError("unexpected error, see the worker log"), request_id)
            if request_id:
                response.headers[REQUEST_ID_HEADER] = request_id
            # Which model answered (jobs check it): the version that computed an answer, else the active one.
            for name, value in model_headers(str(model.name), versions.active).items():
                response.headers.setdefault(name, value)
            metrics.requests.labels(route, str(response.status_code)).inc()
            metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            return response

        return endpoint

    async def read_request_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        return await read_body(request.receive, declared, settings.max_body_bytes)

    async def predict(body: bytes, content_type: bytes) -> tuple[dict[str, Any], str]:
        predictor = state.require_ready()
        rows = predictor.parse_one(body)
        version = versions.choose()
        [answer] = await predictor.predict(rows, version.target)
        return answer, version.label

    async def batch_predict(body: bytes, content_type: bytes) -> tuple[list[dict[str, Any]], str]:
        predictor = state.require_ready()
        binary = content_type.partition(b";")[0].strip().lower() == BINARY_ROWS
        rows = predictor.parse_binary(body) if binary else predictor.parse_many(body)
        version = versions.choose()  # a request's rows all go to one version
        return await predictor.predict(rows, version.target), version.label

    hot = {
        route: PredictionRoute(route, fn, metrics, settings.max_body_bytes, str(model.name), active_version)
        for route, fn in (("/predict", predict), ("/batch_predict", batch_predict))
    }

    async def health(request: Request) -> Response:
        ready = state.predictor is not None and not drain.active
        body = {
            "status": "draining" if drain.active else state.status,
            "worker_id": settings.worker_id,
            "gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES") or None,
            "device": runtime.device,
            "model_loaded": state.predictor is not None,
            "model_name": model.name,
            "model_version": versions.active,
            "serving": versions.state(),
            "input_shape": list(model.input_shape or ()),
            "queued_rows": batcher.queued_rows,
            "pid": os.getpid(),
            "error": state.error,
        }
        return json_response(body, 200 if ready else 503)

    async def metadata(request: Request) -> Response:
        state.require_ready()
        return json_response({**(state.metadata or {}), "versions": versions.serving, "version": versions.active})

    async def index(request: Request) -> Response:
        return json_response(
            {
                "message": f"JAX inference worker serving {model.name} v{versions.active}",
                "worker_id": settings.worker_id,
                "docs": "/docs",
                "health": "/health",
            }
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", handler("/", index)),
        Route("/health", handler("/health", health)),
        Route("/metadata", handler("/metadata", metadata)),
        Route("/metrics", metrics_endpoint),
        # POST never reaches these two (HotRoutes takes it); they answer other methods with 405.
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in hot.items()),
        *protocol_routes(model, state, read_request_body, settings.max_rows_per_request, handler, metrics),
        *admin_routes(str(model.name), versions, settings.worker_max_artifact_bytes, settings.max_body_bytes,
                      handler, admin_token=settings.worker_admin_token),
    ]
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})  # a 405's Allow
        if request.url.path.startswith("/v2"):
            return protocol_error(str(exc.detail), exc.status_code, headers)
        error = WorkerError(str(exc.detail))
        error.status_code, error.code = exc.status_code, "not_found" if exc.status_code == 404 else "http_error"
        return error_response(error, request.headers.get(REQUEST_ID_HEADER), headers)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    return HotRoutes(app, hot)
