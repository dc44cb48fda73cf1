"""Request id, metrics and one JSON access-log line per request.

A plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a
stream copy per request). The request id comes from ``X-Request-ID`` or is
generated; it is passed to the worker and returned to the client.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics

access_log = logging.getLogger("gateway.access")
REQUEST_ID_HEADER = b"x-request-id"
_KNOWN_ROUTES = frozenset(
    {"/", "/predict", "/batch_predict", "/health", "/metadata", "/metrics", "/gateway/health", "/gateway/info",
     "/docs", "/redoc", "/openapi.json", "/jobs"}
)


def route_label(path: str) -> str:
    """A bounded set of labels, so clients cannot blow up metric cardinality."""
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/jobs/"):
        return "/jobs/{id}/result" if path.endswith("/result") else "/jobs/{id}"
    if path.startswith("/docs/"):
        return "/docs/*"
    return "other"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        # Generated ids: a random per-process prefix and a counter, unique without a syscall per request.
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        request_id = request_id or f"{self._id_prefix}{next(self._id_counter):08x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope["path"])
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(elapsed)
            if self.log_requests:
                access_log.info(
                    orjson.dumps(
                        {
                            "ts": time.time(),
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "worker": state.get("backend"),
                            "attempts": state.get("attempts"),
                            "latency_ms": round(elapsed * 1000, 3),
                        }
                    ).decode()
                )
