"""Request id, metrics and one JSON access-log line per request.

A plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a
stream copy per request). The request id comes from ``X-Request-ID`` when it
fits the pattern (by default at most 128 of ``A-Za-z0-9._:-``), else it is
generated: a client's header goes into the log line, the worker's request and
the answer, so an unbounded or binary one could break all three (a 70 KB id
once filled the launcher's log pipe and froze the gateway). The id is passed
to the worker and returned to the client.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics

access_log = logging.getLogger("gateway.access")
REQUEST_ID_HEADER = b"x-request-id"
_KNOWN_ROUTES = frozenset(
    {"/", "/predict", "/batch_predict", "/health", "/metadata", "/metrics", "/gateway/health", "/gateway/info",
     "/docs", "/redoc", "/openapi.json", "/jobs", "/v2", "/v2/health/live", "/v2/health/ready"}
)


def route_label(path: str) -> str:
    """A bounded set of labels, so clients cannot blow up metric cardinality."""
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/jobs/"):
        return "/jobs/{id}/result" if path.endswith("/result") else "/jobs/{id}"
    if path.startswith("/docs/"):
        return "/docs/*"
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}" + next((end for end in ("/infer", "/ready") if path.endswith(end)), "")
    return "other"


def request_id_pattern(allowed_chars: str, max_length: int) -> re.Pattern[bytes]:
    """The ids taken from clients: 1 to ``max_length`` characters of the class ``[allowed_chars]``."""
    return re.compile(f"[{allowed_chars}]{{1,{max_length}}}".encode("ascii"))


class RequestContext:
    def __init__(
        self, app: ASGIApp, metrics: GatewayMetrics, *, request_id_pattern: re.Pattern[bytes],
        log_requests: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self._accepted_id = request_id_pattern
        # Generated ids: a random per-process prefix and a counter, unique without a syscall per request.
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        if given is not None and given.isascii() and self._accepted_id.fullmatch(given):
            request_id = given.decode("ascii")
        else:
            request_id = f"{self._id_prefix}{next(self._id_counter):08x}"
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
                            "key": state.get("key_id"),
                            "worker": state.get("backend"),
                            "attempts": state.get("attempts"),
                            "latency_ms": round(elapsed * 1000, 3),
                        }
                    ).decode()
                )
