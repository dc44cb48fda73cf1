"""The worker's HTTP API: parse and validate, hand rows to the batcher, answer.

The app is built by :func:`create_app` from settings and a runtime-like object
(``infer``, ``load_and_warm_up``, ``model``, ``device``), so tests can run it
with a fake runtime and no JAX.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.batcher import Batcher
from worker.contract import Model
from worker.errors import InvalidInput, MalformedRequest, NotReady, PayloadTooLarge, WorkerError
from worker.metrics import WorkerMetrics
from worker.runtime import visible_gpu
from worker.schemas import PredictRequest, request_model_for_rank
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"


class Runtime(Protocol):
    model: Model
    device: str

    def load_and_warm_up(self) -> None: ...
    def infer(self, rows: np.ndarray) -> dict[str, np.ndarray]: ...


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def error_response(error: WorkerError, request_id: str | None) -> Response:
    headers = {"Retry-After": "1"} if error.status_code == 503 else None
    body = {"error": {"code": error.code, "message": error.message}, "request_id": request_id}
    return json_response(body, error.status_code, headers)


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
    where = where.lstrip(".") or "body"
    return f"{where}: {first['msg']}"


class Predictor:
    """Turns validated requests into model rows and model outputs into responses."""

    def __init__(self, runtime: Runtime, batcher: Batcher, settings: WorkerSettings) -> None:
        self.model = runtime.model
        self.batcher = batcher
        self.settings = settings
        request_model = request_model_for_rank(len(self.model.input_shape))
        self._one = TypeAdapter(request_model)
        self._many = TypeAdapter(list[request_model])  # type: ignore[valid-type]

    def parse_one(self, body: bytes) -> PredictRequest:
        return self._validate(self._one, body)

    def parse_many(self, body: bytes) -> list[PredictRequest]:
        items = self._validate(self._many, body)
        if len(items) > self.settings.max_rows_per_request:
            raise PayloadTooLarge(
                f"{len(items)} rows in one request; the limit is {self.settings.max_rows_per_request}"
            )
        return items

    @staticmethod
    def _validate(adapter: TypeAdapter[Any], body: bytes) -> Any:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest(f"body is not valid JSON: {exc}") from None
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            raise InvalidInput(_validation_message(exc)) from None

    def to_rows(self, items: Sequence[PredictRequest]) -> np.ndarray:
        """Stack the items' rows; an error names the first item of the wrong shape."""
        shape = self.model.input_shape
        try:
            with np.errstate(over="ignore"):
                rows = np.asarray([item.input_data for item in items], dtype=self.model.input_dtype)
        except ValueError:  # ragged nesting
            rows = None
        if rows is None or rows.shape[1:] != shape:
            for i, item in enumerate(items):
                try:
                    got: object = np.shape(item.input_data)
                except ValueError:
                    got = "ragged rows"
                if got != shape:
                    where = f"[{i}]." if len(items) > 1 else ""
                    raise InvalidInput(f"{where}input_data: expected shape {shape}, got {got}")
        assert rows is not None
        if not np.isfinite(rows).all():
            raise InvalidInput(f"input_data: values overflow {self.model.input_dtype}")
        return rows

    async def predict(self, items: Sequence[PredictRequest]) -> list[dict[str, Any]]:
        if not items:
            return []
        rows = self.to_rows(items)
        started = time.perf_counter()
        outputs = await self.batcher.submit(rows)
        elapsed_ms = (time.perf_counter() - started) * 1000
        answers = []
        for i, item in enumerate(items):
            row = {name: value[i] for name, value in outputs.items()}
            answer = self.model.postprocess(row, {"return_probabilities": item.return_probabilities})
            answer["worker_id"] = self.settings.worker_id
            answer["inference_time_ms"] = round(elapsed_ms, 3)
            answers.append(answer)
        return answers


def create_app(settings: WorkerSettings, runtime: Runtime, metrics: WorkerMetrics) -> Starlette:
    state: dict[str, Any] = {"ready": False}
    batcher = Batcher(
        runtime.infer,
        max_batch_size=settings.max_batch_size,
        timeout_s=settings.batch_timeout_ms / 1000,
        max_queue_rows=settings.max_queue_rows,
        metrics=metrics,
    )
    predictor = Predictor(runtime, batcher, settings)
    model = runtime.model

    async def warm_up() -> None:
        await asyncio.to_thread(runtime.load_and_warm_up)
        state["ready"] = True
        metrics.ready.set(1)
        log.info("worker %s ready", settings.worker_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        warm_up_task = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            warm_up_task.cancel()
            await batcher.stop()

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
            metrics.requests.labels(route, str(response.status_code)).inc()
            metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            return response

        return endpoint

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise PayloadTooLarge(f"body of {declared} bytes; the limit is {settings.max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise PayloadTooLarge(f"body over the limit of {settings.max_body_bytes} bytes")
        return body

    def require_ready() -> None:
        if not state["ready"]:
            raise NotReady("the model is still loading or compiling")

    async def predict(request: Request) -> Response:
        require_ready()
        item = predictor.parse_one(await read_body(request))
        [answer] = await predictor.predict([item])
        return json_response(answer)

    async def batch_predict(request: Request) -> Response:
        require_ready()
        items = predictor.parse_many(await read_body(request))
        return json_response(await predictor.predict(items))

    async def health(request: Request) -> Response:
        body = {
            "status": "healthy" if state["ready"] else "unhealthy",
            "worker_id": settings.worker_id,
            "gpu_id": visible_gpu(),
            "device": runtime.device,
            "model_loaded": state["ready"],
            "model_name": model.name,
            "model_version": model.version,
            "input_shape": list(model.input_shape),
            "queued_rows": batcher.queued_rows,
            "pid": os.getpid(),
        }
        return json_response(body, 200 if state["ready"] else 503)

    async def index(request: Request) -> Response:
        return json_response(
            {
                "message": f"JAX inference worker serving {model.name} v{model.version}",
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
        Route("/metrics", metrics_endpoint),
        Route("/predict", handler("/predict", predict), methods=["POST"]),
        Route("/batch_predict", handler("/batch_predict", batch_predict), methods=["POST"]),
    ]
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = WorkerError(str(exc.detail))
        error.status_code, error.code = exc.status_code, "not_found" if exc.status_code == 404 else "http_error"
        return error_response(error, request.headers.get(REQUEST_ID_HEADER))

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
