"""Forward a request to a healthy worker, retrying on another within the deadline.

Predictions are idempotent, so a request that could not connect, whose
connection dropped before the answer, that got 502/503 from its worker, or
whose try found no answer within TRY_TIMEOUT_S (a hung worker) is tried again
on another worker (up to MAX_ATTEMPTS), all within REQUEST_TIMEOUT_S. Past
that deadline it is 504. Answers that are not valid HTTP are not retried
(another worker would send the same). A client that leaves before its body
has arrived is logged and counted as 499 and nothing is forwarded.

A request goes to one model's pool (gateway/backends.py): the model its path names
(``/models/{name}/predict`` and ``/batch_predict``, forwarded as the worker's ``/predict`` and
``/batch_predict``; ``/v2/models/{name}/...``, forwarded as is), else the default model. Retries
stay in that pool; a name no worker reports is 404 with the served names, and a model whose workers
are all down is 503 + Retry-After for that model alone.

Each try's outcome feeds passive outlier detection (gateway/backends.py): a
500/502/504, a try timeout or a dropped connection is a failure; a 503 is
not (the worker says it is busy or not ready, which its /health tells too).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from common.forwarder import (
    REQUEST_HEADERS,
    BadResponse,
    ConnectFailed,
    ConnectTimedOut,
    DeadlineExceeded,
    TransportError,
    UpstreamResponse,
    WorkerClient,
)
from gateway.backends import AllBackendsBusy, Backend, BackendPool, NoHealthyBackend
from gateway.errors import (
    GatewayError,
    NoWorkerAvailable,
    Overloaded,
    UnknownModel,
    UpstreamBadResponse,
    UpstreamFailed,
    UpstreamTimeout,
    gateway_error_response,
)
from gateway.metrics import GatewayMetrics
from gateway.model_paths import model_of, prediction_route
from gateway.request_body import read_body
from gateway.row_batching import RowBatcher
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({502, 503})
#: Passed on as the client sent them; X-Request-ID is the gateway's (gateway/request_context.py).
_FORWARDED = frozenset(name.encode() for name in REQUEST_HEADERS if name != "x-request-id")


def forwarded_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers passed on to the worker, the first of each name."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if name in _FORWARDED:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def target(scope: Scope, path: str | None = None) -> str:
    """The path and query to forward, as the client sent them (request.url would re-parse the Host header);
    ``path``: another path to forward to, with the client's query."""
    if path is None:
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("latin-1")
    return path


async def send_upstream(send: Send, upstream: UpstreamResponse) -> None:
    """The worker's answer to the client, with a Content-Length as Starlette's Response would set it."""
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in upstream.headers.items()]
    if upstream.status >= 200 and upstream.status not in (204, 304):
        headers.append((b"content-length", str(len(upstream.body)).encode()))
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    await send({"type": "http.response.body", "body": upstream.body})


ErrorResponder = Callable[[GatewayError, str | None, int], Response]


class Proxy:
    """Forwards requests, a plain ASGI app; ``errors`` renders the gateway's own errors (the project's
    envelope by default). Runs inside gateway/request_context.py, which set the request id.

    With ``batch_rows``, single-row ``POST /predict`` requests go through gateway/row_batching.py, one
    batcher per model: rows of different models never share a call.
    """

    def __init__(
        self, pool: BackendPool, client: WorkerClient, metrics: GatewayMetrics, settings: GatewaySettings,
        errors: ErrorResponder = gateway_error_response, batch_rows: bool = False,
    ) -> None:
        self._errors = errors
        self._pool = pool
        self._client = client
        self._metrics = metrics
        self._settings = settings
        self._batch_rows = batch_rows
        #: Per model name (None: no model reported yet), its row batcher.
        self._rows: dict[str | None, RowBatcher] = {}

    def model_for(self, path: str) -> tuple[str | None, str | None]:
        """``(model name, path to forward or None for the client's)`` of a request path; raises for a name no
        worker serves. The model is None only while no worker has reported one (any worker answers)."""
        route = prediction_route(path)
        named, upstream_path = route if route is not None else (model_of(path), None)
        if named is None:
            return self._pool.default_model(), upstream_path
        if not self._pool.serves(named):
            served = self._pool.models()
            if not served:
                raise NoWorkerAvailable("no healthy worker; try again shortly")  # none has reported a model
            raise UnknownModel(f"no worker serves model {named!r}; served: {', '.join(served)}", served)
        return named, upstream_path

    def _batcher(self, model_name: str | None) -> RowBatcher:
        rows = self._rows.get(model_name)
        if rows is None:
            forward = functools.partial(self._forward, model_name=model_name)
            rows = self._rows[model_name] = RowBatcher(forward, self._pool, self._metrics, self._settings,
                                                       model_name)
        return rows

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        request_id = state["request_id"]
        model_name: str | None = None
        try:
            body = await read_body(scope, receive, self._settings.max_body_bytes)
            model_name, upstream_path = self.model_for(scope["path"])
            headers = forwarded_headers(scope["headers"])
            headers["x-request-id"] = request_id
            path = target(scope, upstream_path)
            if self._batch_rows and path == "/predict" and scope["method"] == "POST":
                upstream = await self._batcher(model_name).predict(headers, body, state)
            else:
                upstream = await self._forward(scope["method"], path, headers, body, state, model_name=model_name)
        except GatewayError as exc:
            if exc.status_code == 503:
                self._metrics.shed.labels(exc.code, model_name or "").inc()
            await self._errors(exc, request_id, self._settings.retry_after_s)(scope, receive, send)
            return
        await send_upstream(send, upstream)

    def _record_try(self, backend: Backend, ok: bool, error: str, requests: int) -> None:
        if backend.record_try(ok, error, self._settings.outlier_failures_to_eject, requests):
            self._metrics.outlier_ejections.labels(backend.url, backend.model_name or "").inc()
            self._metrics.backend_up.labels(backend.url, backend.model_name or "").set(0)
            log.warning("worker %s leaves rotation until a probe passes: %s", backend.url, backend.last_error)

    def _choose(self, model_name: str | None, tried: set[Backend], least_outstanding: bool) -> Backend:
        unavailable = ("no healthy worker; try again shortly" if model_name is None else
                       f"no healthy worker serves model {model_name!r}; try again shortly")
        try:
            return self._pool.choose(model_name, exclude=tried, least_outstanding=least_outstanding)
        except NoHealthyBackend:
            if not tried:
                raise NoWorkerAvailable(unavailable) from None
            # Every healthy worker was tried once: one may still take a second try.
            try:
                return self._pool.choose(model_name, least_outstanding=least_outstanding)
            except NoHealthyBackend:
                raise NoWorkerAvailable(unavailable) from None
        except AllBackendsBusy as exc:
            raise Overloaded(str(exc)) from None

    async def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes, state: dict,
        deadline: float | None = None, requests: int = 1, least_outstanding: bool = False,
        model_name: str | None = None,
    ) -> UpstreamResponse:
        """To a worker of ``model_name`` (None: any, before any worker reported a model).

        ``deadline`` (monotonic): of a request that waited to be batched; None: REQUEST_TIMEOUT_S from now.

        ``requests``: the client requests this call carries (a gathered batch); each counts for outlier
        ejection. ``least_outstanding``: to the worker with the fewest calls in flight, whatever BALANCER
        says (the row batcher's calls: round robin would put one on a busy or hung worker while another idles).
        """
        if deadline is None:
            deadline = time.monotonic() + self._settings.request_timeout_s
        tried: set[Backend] = set()
        failure = "no attempt made"
        for attempt in range(1, self._settings.max_attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout(f"no answer within {self._settings.request_timeout_s:.1f}s")
            backend = self._choose(model_name, tried, least_outstanding)
            tried.add(backend)
            state["backend"], state["attempts"] = backend.url, attempt
            backend.in_flight += 1
            self._metrics.in_flight.inc()
            try_timeout = min(self._settings.try_timeout_s, remaining)
            try:
                upstream = await self._client.send(backend.url, method, path, headers, body, try_timeout)
            except ConnectFailed as exc:
                backend.eject(str(exc))
                failure, reason = str(exc), "connect_failed"
            except ConnectTimedOut as exc:  # busy, not down: its accept queue is full, so no ejection
                failure, reason = str(exc), "connect_timeout"
            except TransportError as exc:
                failure, reason = str(exc), "connection_dropped"
                self._record_try(backend, False, failure, requests)
            except DeadlineExceeded as exc:
                self._record_try(backend, False, str(exc), requests)
                if try_timeout >= remaining:
                    raise UpstreamTimeout(str(exc)) from None
                failure, reason = str(exc), "try_timeout"
            except BadResponse as exc:
                raise UpstreamBadResponse(str(exc)) from None
            else:
                failed = upstream.status >= 500 and upstream.status != 503
                self._record_try(backend, not failed, f"{backend.url} answered {upstream.status}", requests)
                if upstream.status not in RETRYABLE_STATUS or attempt == self._settings.max_attempts:
                    return upstream
                failure, reason = f"{backend.url} answered {upstream.status}", f"status_{upstream.status}"
            finally:
                backend.in_flight -= 1
                self._metrics.in_flight.dec()
            self._metrics.retries.labels(reason, model_name or "").inc()
            log.info("retrying %s %s after attempt %d: %s", method, path, attempt, failure)
        raise UpstreamFailed(f"no worker answered after {self._settings.max_attempts} attempts: {failure}")
