"""The gateway app: its own routes, the docs, and the proxy to the workers.

``create_app(settings)`` builds everything; the lifespan opens the worker
client and starts the health checks and the model reconciler
(gateway/reconciler.py), and closes them on shutdown. No module
globals, no JAX.

A path the gateway answers itself (``/gateway/*``, ``/metrics``, the docs,
``/jobs``, ``/models``, ``/v2``, ``/v2/health/*``, ``/v2/repository/*``) is a Starlette route, never proxied: another
method on it is 405 with ``Allow``. Only the workers' known routes are proxied
(gateway/proxied_routes.py, plain ASGI beside Starlette, for speed); any other
path is 404 without touching a worker. Plain ASGI middleware around both,
outermost first: request context, CORS (when origins are set), access control
(gateway/auth.py), JSON content type (gateway/content_type.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Hashable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Scope

from common.draining import Drain
from common.forwarder import WorkerClient
from common.gc_tuning import frozen_startup_heap
from gateway import __version__
from gateway.access_log import AccessLog
from gateway.activation import Activation, WorkerAdmin
from gateway.auth import access_middleware
from gateway.backends import BackendPool
from gateway.content_type import RequireJson
from gateway.discovery import WorkerDiscovery
from gateway.docs import (
    LiveDocument,
    OpenAPIBuilder,
    docs_routes,
    document_access,
    model_prediction_api,
    prediction_api,
)
from gateway.errors import error_response
from gateway.health import HealthChecker
from gateway.job_routes import job_routes, jobs_openapi
from gateway.key_routes import key_routes
from gateway.launcher_status import read_processes
from gateway.metrics import GatewayMetrics
from gateway.model_routes import model_routes, models_openapi
from gateway.protocol import is_protocol_path, protocol_body, protocol_error_response, protocol_health_routes
from gateway.protocol_docs import protocol_api
from gateway.proxied_routes import ProxiedRoutes
from gateway.proxy import Proxy
from gateway.reconciler import Reconciler
from gateway.request_context import RequestContext, request_id_pattern
from gateway.settings import GatewaySettings
from gateway.usage_control import UsageControl, job_body_limits
from jobs.registry import Registry
from jobs.service import JobService
from jobs.settings import JobsSettings

_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes on this path (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or {"GET", "HEAD"}  # a Mount: the static docs assets
    return sorted(methods)


def pool_summaries(pool: BackendPool) -> list[dict[str, Any]]:
    """One entry per model's pool, for /gateway/info: its workers, how many take requests, which is the default."""
    default = pool.default_model()
    summaries = []
    for name in pool.models():
        backends = pool.pool(name)
        summaries.append({"model": name, "default": name == default, "workers": len(backends),
                          "healthy": sum(backend.in_rotation for backend in backends),
                          "backends": [backend.url for backend in backends]})
    return summaries


#: The default model's name and every served model's metadata by name (gateway/backends.py).
Served = tuple[str | None, dict[str, dict[str, Any]]]


def served_now(pool: BackendPool) -> Served:
    return pool.default_model(), pool.served_models()


def served_identity(served: Served | None) -> Hashable:
    """What the document depends on: the default model, and each served model's name and version."""
    if served is None:
        return None
    default, models = served
    return default, tuple((name, model.get("version")) for name, model in models.items())


def build_served_document(served: Served | None, api_keys: bool = False) -> dict[str, Any]:
    """The document of every served model: ``/predict`` documents the default one."""
    if served is None:
        return build_document(None, api_keys)
    default, models = served
    return build_document(models.get(default) if default else None, api_keys, models, default)


def build_document(model: dict[str, Any] | None, api_keys: bool = False,
                   models: dict[str, dict[str, Any]] | None = None, default: str | None = None) -> dict[str, Any]:
    """The OpenAPI document for the default model's metadata (None: generic) and each of ``models`` (by name:
    its own ``/models/{name}/...`` paths); ``api_keys``: access control is on."""
    openapi = OpenAPIBuilder(
        "JAX inference gateway", __version__,
        "Predictions from JAX / NumPyro models on a pool of workers, async jobs "
        "(watch them on [/jobs/ui](/jobs/ui)), and model versions (see them on [/models/ui](/models/ui)).",
    )
    prediction_api(openapi, model)
    model_prediction_api(openapi, models or {}, default)
    protocol_api(openapi, model, list(models or {}))
    jobs_openapi(openapi, model)
    models_openapi(openapi)
    document_access(openapi, api_keys)
    return openapi.document


def create_app(
    settings: GatewaySettings | None = None, jobs_settings: JobsSettings | None = None, drain: Drain | None = None,
) -> Starlette:
    settings = settings or GatewaySettings()
    drain = drain or Drain()
    metrics = GatewayMetrics(settings.launcher_status_file)
    pool = BackendPool(max_in_flight=settings.max_in_flight_per_worker, balancer=settings.balancer,
                       default_model=settings.default_model)
    # Jobs name a model (default: the default one); a served model whose workers are all down is 503 to them, not 422.
    jobs = JobService.from_settings(
        jobs_settings or JobsSettings(), metrics.registry, served_model=pool.served_model,
        served_models=lambda: {name: pool.served_model(name) for name in pool.models()})
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
    access_log = AccessLog(flush_s=settings.access_log_flush_s, max_lines=settings.access_log_max_lines)
    keys_on = bool(settings.api_keys or settings.admin_api_keys)
    control = UsageControl.build(settings, jobs.database, jobs.settings.jobs_dir, metrics.registry,
                                 lambda: (pool.served_model() or {}).get("name"),
                                 job_body_bytes=job_body_limits(jobs.settings))
    admin_client = httpx.AsyncClient()
    registry = Registry(jobs.database, jobs.store, claim_stale_s=jobs.settings.registry_claim_stale_s)
    activation = Activation(registry, pool, WorkerAdmin(admin_client, settings.worker_admin_token),
                            settings.activation_timeout_s)
    reconciler = Reconciler(activation, pool, interval_s=settings.model_reconcile_s,
                            max_artifact_bytes=settings.model_max_artifact_bytes,
                            timeout_s=settings.activation_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        access_log.open()
        await client.start()
        await checker.probe_all()  # a restarted gateway knows its workers before it takes a request
        health_task = asyncio.create_task(checker.run(), name="health-checks")
        reconcile_task = asyncio.create_task(reconciler.run(), name="model-reconciler")
        usage_tasks = [asyncio.create_task(loop(), name="keys-and-usage") for loop in control.background()]
        frozen_startup_heap()
        try:
            yield
        finally:
            reconciler.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reconcile_task), settings.activation_timeout_s)
            for task in (reconcile_task, health_task, *usage_tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await checker.aclose()
            await admin_client.aclose()
            await client.aclose()
            await control.close()
            await jobs.close()
            access_log.close()

    async def gateway_health(request: Request) -> Response:
        alive, total = pool.summary()
        status = "unhealthy" if alive == 0 else "healthy" if alive == total else "degraded"
        if drain.active:
            status = "draining"
        body = {"status": status, "alive_backends": alive, "total_backends": total}
        return JSONResponse(body, 503 if alive == 0 or drain.active else 200)

    async def gateway_info(request: Request) -> Response:
        backends = pool.backends
        body: dict[str, Any] = {
            "name": "jax-inference-gateway",
            "version": __version__,
            "total_backends": len(backends),
            "backends": [backend.describe() for backend in backends],
            "default_model": pool.default_model(),
            "pools": pool_summaries(pool),
        }
        processes = read_processes(settings.launcher_status_file)  # a small local file: read at each request
        if processes is not None:
            body["processes"] = processes
        return JSONResponse(body)

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(owned, request.scope))
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
        *docs_routes(LiveDocument(functools.partial(build_served_document, api_keys=keys_on),
                                  functools.partial(served_now, pool), served_identity)),
        *job_routes(jobs, settings.retry_after_s),
        *model_routes(activation, pool, settings.model_max_artifact_bytes, settings.activation_timeout_s,
                      settings.retry_after_s),
        *protocol_health_routes(pool),
        *key_routes(control),
    ]

    accepted_id = request_id_pattern(settings.request_id_chars, settings.request_id_max_length)
    app: ASGIApp = ProxiedRoutes(
        Starlette(routes=owned, lifespan=lifespan, exception_handlers={HTTPException: http_error}),
        owned, proxy, protocol_proxy,
    )
    middleware = [
        Middleware(RequestContext, metrics=metrics, request_id_pattern=accepted_id,
                   access_log=access_log if settings.access_log else None),
        *access_middleware(settings, control),
        Middleware(RequireJson),
    ]
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app
