"""``POST /predict`` and ``POST /batch_predict`` as plain ASGI, in front of the worker's Starlette app.

Every prediction takes one of these two routes. Through Starlette each paid for
its middleware, the router's regex per route, a Request and a Response object:
more CPU per single-row request than parsing and answering the row. Here an
endpoint reads the body from ``receive``, calls the predictor and sends the two
ASGI messages itself; errors are the same envelope, request ids and metrics the
same as the Starlette routes'. :class:`HotRoutes` takes only ``POST`` on the
exact paths; everything else (other routes, other methods: 405 with Allow,
lifespan) goes to the Starlette app unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from common.asgi_body import BodyAborted, BodyTooLarge, read_asgi_body
from common.model_headers import model_headers
from worker.errors import ClientGone, PayloadTooLarge, WorkerError
from worker.metrics import WorkerMetrics
from worker.responses import error_response

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"
#: ``handle(body, content_type)`` -> the JSON answer and the model version that computed it.
Handle = Callable[[bytes, bytes], Awaitable[tuple[Any, str]]]


async def read_body(receive: Receive, declared: str | bytes | None, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 otherwise, before reading when declared larger)."""
    if isinstance(declared, str):
        declared = declared.encode("latin-1")
    try:
        return await read_asgi_body(receive, declared if declared and declared.isdigit() else None, limit)
    except BodyTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except BodyAborted:
        raise ClientGone("the client closed the connection before its body arrived") from None


def usage_headers(answer: Any) -> list[tuple[bytes, bytes]]:
    """``X-Rows`` and ``X-Inference-Time-Ms`` of an answer, which the gateway counts per API key without parsing
    the body (none for an answer without ``inference_time_ms``)."""
    rows = answer if isinstance(answer, list) else [answer]
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    elapsed = first.get("inference_time_ms")
    if not isinstance(elapsed, int | float):
        return []
    return [(b"x-rows", str(len(rows)).encode()), (b"x-inference-time-ms", str(elapsed).encode())]


class PredictionRoute:
    """One POST route as an ASGI app: body within the limit, ``handle``, a JSON answer, counted.

    Every answer names the model that computed it (common/model_headers.py): an answer its version,
    an error the version serving then (``serving_version()``).
    """

    def __init__(self, route: str, handle: Handle, metrics: WorkerMetrics, max_body_bytes: int,
                 model_name: str, serving_version: Callable[[], str]) -> None:
        self._route = route
        self._model_name = model_name
        self._serving_version = serving_version
        self._by_version: dict[str, tuple[list[tuple[bytes, bytes]], Any]] = {}
        self._handle = handle
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._ok = metrics.requests.labels(route, "200")
        self._seconds = metrics.request_seconds.labels(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = content_type = declared = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = value
        try:
            body = await read_body(receive, declared, self._max_body_bytes)
            answer, version = await self._handle(body, content_type or b"")
            payload = orjson.dumps(answer)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the envelope
            await self._error(exc, request_id, started, scope, receive, send)
            return
        identity, predictions = self._version(version)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   *identity, *usage_headers(answer)]
        if request_id:
            headers.append((b"x-request-id", request_id))
        self._ok.inc()
        predictions.inc()
        self._seconds.observe(time.perf_counter() - started)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _version(self, version: str) -> tuple[list[tuple[bytes, bytes]], Any]:
        """A version's raw identity headers and its predictions counter, made once per version."""
        known = self._by_version.get(version)
        if known is None:
            headers = model_headers(self._model_name, version).items()
            known = ([(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
                     self._metrics.predictions.labels(self._route, version))
            self._by_version[version] = known
        return known

    async def _error(self, exc: Exception, request_id: bytes | None, started: float, scope: Scope,
                     receive: Receive, send: Send) -> None:
        if not isinstance(exc, WorkerError):
            log.exception("unexpected error on %s", self._route, exc_info=exc)
            exc = WorkerError("unexpected error, see the worker log")
        rid = request_id.decode("latin-1") if request_id else None
        response = error_response(exc, rid)
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        response.headers.update(model_headers(self._model_name, self._serving_version()))
        self._metrics.requests.labels(self._route, str(response.status_code)).inc()
        self._seconds.observe(time.perf_counter() - started)
        await response(scope, receive, send)


class HotRoutes:
    """ASGI: ``POST`` on a path of ``routes`` goes straight to its endpoint, the rest to ``app``."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, ASGIApp]) -> None:
        self._app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self._app(scope, receive, send)
