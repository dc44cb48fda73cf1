"""Request id, metrics and one JSON access-log line per request, for every path.

A plain ASGI middleware, the outermost layer of the app (Starlette's
BaseHTTPMiddleware costs a task and a stream copy per request). The request id
comes from ``X-Request-ID`` when it fits the pattern (by default at most 128 of
``A-Za-z0-9._:-``), else it is generated: a client's header goes into the log
line, the worker's request and the answer, so an unbounded or binary one could
break all three (a 70 KB id once filled the launcher's log pipe and froze the
gateway). The id is passed to the worker and returned to the client. Nothing
here costs a syscall per request: generated ids come from a counter, log lines
are written in batches (gateway/access_log.py). The model and version that answered (the worker's
X-Model-Name and X-Model-Version headers) go into the log line, and the model into gateway_model_requests.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
import urllib.parse

import orjson
from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access_log import AccessLog
from gateway.metrics import GatewayMetrics

REQUEST_ID_HEADER = b"x-request-id"
_MODEL_HEADERS = {b"x-model-name": "model_name", b"x-model-version": "model_version"}
_KNOWN_ROUTES = frozenset(
    {"/", "/predict", "/batch_predict", "/health", "/metadata", "/metrics", "/gateway/health", "/gateway/info",
     "/docs", "/redoc", "/openapi.json", "/jobs", "/v2", "/v2/health/live", "/v2/health/ready"}
)


def route_label(path: str) -> str:
    """A bounded set of labels, so clients cannot blow up metric cardinality."""
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/jobs/"):
        return next((f"/jobs/{{id}}{end}" for end in ("/result", "/retry") if path.endswith(end)), "/jobs/{id}")
    if path.startswith("/docs/"):
        return "/docs/*"
    if path.startswith("/models/"):
        return next((f"/models/{{name}}/{end}" for end in ("predict", "batch_predict")
                     if path.rstrip("/").endswith("/" + end)), "/models/*")
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}" + next((end for end in ("/infer", "/ready") if path.endswith(end)), "")
    return "other"


def request_id_pattern(allowed_chars: str, max_length: int) -> re.Pattern[bytes]:
    """The ids taken from clients: 1 to ``max_length`` characters of the class ``[allowed_chars]``."""
    return re.compile(f"[{allowed_chars}]{{1,{max_length}}}".encode("ascii"))


class RequestContext:
    def __init__(
        self, app: ASGIApp, metrics: GatewayMetrics, *, request_id_pattern: re.Pattern[bytes],
        access_log: AccessLog | None = None,
    ) -> None:
        """``access_log``: where the lines go; None: no access log."""
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._accepted_id = request_id_pattern
        # Generated ids: a random per-process prefix and a counter, unique without a syscall per request.
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()
        # The metric children by label: prometheus_client's labels() costs ~1 us a call. Bounded by route_label.
        self._counted: dict[tuple[str, int], Counter] = {}
        self._by_model: dict[tuple[str, int], Counter] = {}  # bounded by the models the workers name
        self._timed: dict[str, Histogram] = {}

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
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                for name, value in headers:
                    key = _MODEL_HEADERS.get(name.lower())
                    if key is not None:
                        text = value.decode("latin-1")
                        state[key] = urllib.parse.unquote(text) if "%" in text else text
                message["headers"] = [*headers, id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: dict, status: int, elapsed: float) -> None:
        route = route_label(scope["path"])
        counted = self._counted.get((route, status))
        if counted is None:
            counted = self._counted[route, status] = self.metrics.requests.labels(route, str(status))
        counted.inc()
        model = state.get("model_name") or ""
        by_model = self._by_model.get((model, status))
        if by_model is None:
            by_model = self._by_model[model, status] = self.metrics.model_requests.labels(model, str(status))
        by_model.inc()
        timed = self._timed.get(route)
        if timed is None:
            timed = self._timed[route] = self.metrics.request_seconds.labels(route)
        timed.observe(elapsed)
        if self.access_log is not None and self.access_log.enabled():
            self.access_log.add(orjson.dumps({
                "ts": time.time(),
                "request_id": state["request_id"],
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "key": state.get("key_id"),
                "worker": state.get("backend"),
                "model": state.get("model_name"),
                "version": state.get("model_version"),
                "attempts": state.get("attempts"),
                "latency_ms": round(elapsed * 1000, 3),
            }))
