"""The gateway app: its own routes, the docs, and a catch-all proxy to the workers.

``create_app(settings)`` builds everything; the lifespan opens the worker
client and starts the health checks, and closes them on shutdown. No module
globals, no JAX.

A path the gateway answers itself (``/gateway/*``, ``/metrics``, the docs,
``/jobs``, ``/v2/health/*``) is never proxied: another method on it is 405 with
``Allow``. Only the workers' known routes are proxied (the rest of ``/v2``, the
Open Inference Protocol, with that protocol's error body); any other path is 404
without touching a worker. Middleware, outermost first: request context, CORS
(when origins are set), access control (gateway/auth.py), JSON content type
(gateway/content_type.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from common.draining import Drain
from gateway import __version__
from gateway.auth import access_middleware
from gateway.backends import BackendPool
from gateway.content_type import RequireJson
from gateway.discovery import WorkerDiscovery
from gateway.docs import LiveDocument, OpenAPIBuilder, docs_routes, document_access, prediction_api
from gateway.errors import error_response
from gateway.forwarder import WorkerClient
from gateway.health import HealthChecker
from gateway.job_routes import job_routes, jobs_openapi
from gateway.metrics import GatewayMetrics
from gateway.protocol import is_protocol_path, protocol_body, protocol_error_response, protocol_health_routes
from gateway.protocol_docs import protocol_api
from gateway.proxy import Proxy
from gateway.request_context import RequestContext, request_id_pattern
from gateway.settings import GatewaySettings
from jobs.service import JobService
from jobs.settings import JobsSettings

#: The worker routes the gateway proxies (a trailing slash too: the worker redirects it); ``/v2`` and below is
#: the Open Inference Protocol.
WORKER_PATHS = frozenset({"/", "/predict", "/batch_predict", "/health", "/metadata", "/v2"})
WORKER_PREFIXES = ("/v2/",)
PROXIED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


class ProxyRoute(Route):
    """The proxy to the workers' known routes; never ``/gateway/*`` or a path one of the gateway's own routes has."""

    def __init__(self, owned: list[BaseRoute], endpoint: Any) -> None:
        super().__init__("/{path:path}", endpoint, methods=PROXIED_METHODS)
        # One regex for every owned path (their parameters unnamed): a route's own matches() costs ~1.5 us each.
        patterns = ["^/gateway/", *(re.sub(r"\(\?P<\w+>", "(?:", r.path_regex.pattern) for r in owned)]
        self._owned = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and (
            self._owned.match(scope["path"])
            or not ((scope["path"].rstrip("/") or "/") in WORKER_PATHS or scope["path"].startswith(WORKER_PREFIXES))
        ):
            return Match.NONE, {}
        return super().matches(scope)


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes on this path (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or {"GET", "HEAD"}  # a Mount: the static docs assets
    return sorted(methods)


def build_document(model: dict[str, Any] | None, api_keys: bool = False) -> dict[str, Any]:
    """The OpenAPI document for a served model's metadata (None: generic); ``api_keys``: access control is on."""
    openapi = OpenAPIBuilder(
        "JAX inference gateway", __version__,
        "Predictions from JAX / NumPyro models on a pool of workers, and async jobs "
        "(watch them on [/jobs/ui](/jobs/ui)).",
    )
    prediction_api(openapi, model)
    protocol_api(openapi, model)
    jobs_openapi(openapi, model)
    document_access(openapi, api_keys)
    return openapi.document


def create_app(
    settings: GatewaySettings | None = None, jobs_settings: JobsSettings | None = None, drain: Drain | None = None,
) -> Starlette:
    settings = settings or GatewaySettings()
    drain = drain or Drain()
    metrics = GatewayMetrics()
    pool = BackendPool(max_in_flight=settings.max_in_flight_per_worker, balancer=settings.balancer)
    jobs = JobService.from_settings(jobs_settings or JobsSettings(), metrics.registry, served_model=pool.served_model)
    client = WorkerClient(
        connect_timeout_s=settings.connect_timeout_s,
        max_connections_per_worker=settings.max_connections_per_worker,
    )
    checker = HealthChecker(
        pool,
        WorkerDiscovery(settings.workers),
        metrics,
        interval_s=settings.health_interval_s,
        timeout_s=settings.health_timeout_s,
        misses_to_eject=settings.health_misses_to_eject,
        resolve_interval_s=settings.workers_resolve_interval_s,
    )
    proxy = Proxy(pool, client, metrics, settings, batch_rows=settings.gateway_batching)
    protocol_proxy = Proxy(pool, client, metrics, settings, errors=protocol_error_response)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await client.start()
        await checker.probe_all()  # a restarted gateway knows its workers before it takes a request
        health_task = asyncio.create_task(checker.run(), name="health-checks")
        try:
            yield
        finally:
            health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health_task
            await checker.aclose()
            await client.aclose()
            await jobs.close()

    async def gateway_health(request: Request) -> Response:
        alive, total = pool.summary()
        status = "unhealthy" if alive == 0 else "healthy" if alive == total else "degraded"
        if drain.active:
            status = "draining"
        body = {"status": status, "alive_backends": alive, "total_backends": total}
        return JSONResponse(body, 503 if alive == 0 or drain.active else 200)

    async def gateway_info(request: Request) -> Response:
        backends = pool.backends
        return JSONResponse({
            "name": "jax-inference-gateway",
            "version": __version__,
            "total_backends": len(backends),
            "backends": [backend.describe() for backend in backends],
        })

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(routes, request.scope))
        if is_protocol_path(request.scope["path"]):
            return protocol_body(exc.status_code, str(exc.detail), headers)
        return error_response(
            exc.status_code, _ERROR_CODES.get(exc.status_code, "http_error"), str(exc.detail),
            request.scope["state"].get("request_id"), headers=headers,
        )

    owned = [
        Route("/gateway/health", gateway_health),
        Route("/gateway/info", gateway_info),
        Route("/metrics", metrics_endpoint),
        *docs_routes(LiveDocument(functools.partial(build_document, api_keys=bool(settings.api_keys)),
                                  pool.served_model)),
        *job_routes(jobs),
        *protocol_health_routes(pool),
    ]

    async def forward(request: Request) -> Response:
        # /v2 and /v2/...: the Open Inference Protocol's routes, proxied with its error body.
        chosen = protocol_proxy if is_protocol_path(request.scope["path"]) else proxy
        return await chosen.handle(request)

    routes = [*owned, ProxyRoute(owned, forward)]
    accepted_id = request_id_pattern(settings.request_id_chars, settings.request_id_max_length)
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestContext, metrics=metrics, log_requests=settings.access_log,
                       request_id_pattern=accepted_id),
            *access_middleware(settings),
            Middleware(RequireJson),
        ],
        exception_handlers={HTTPException: http_error},
    )
