"""Active health checks: probe every worker's /health on an interval.

A worker is healthy when /health answers 200 (its model is loaded and warm).
When a healthy worker reports a model the gateway has no metadata for, its
``/metadata`` is fetched: the API docs and the job checks follow the served
model. The same loop re-resolves worker names, so scaled replicas join and leave. A worker that
now reports another model than before has moved pools (gateway/backends.py): it is logged, and its
``gateway_backend_up`` series moves to the new model's label.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from gateway.backends import Backend, BackendPool, BackendState
from gateway.discovery import WorkerDiscovery
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(
        self,
        pool: BackendPool,
        discovery: WorkerDiscovery,
        metrics: GatewayMetrics,
        *,
        interval_s: float,
        timeout_s: float,
        misses_to_eject: int,
        resolve_interval_s: float,
    ) -> None:
        self._pool = pool
        self._discovery = discovery
        self._metrics = metrics
        self._interval_s = interval_s
        self._misses_to_eject = misses_to_eject
        self._resolve_interval_s = resolve_interval_s
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._last_resolve = float("-inf")
        #: Per backend URL, the model label its gateway_backend_up series has.
        self._up_model: dict[str, str] = {}

    async def refresh_backends(self) -> None:
        self._pool.replace(await self._discovery.expand())
        self._last_resolve = time.monotonic()

    async def probe(self, backend: Backend) -> None:
        before, model_before = backend.state, backend.model_name
        try:
            response = await self._client.get(f"{backend.url}/health")
            info = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            ok = response.status_code == 200
            backend.record_probe(ok, info, None if ok else f"/health answered {response.status_code}")
        except httpx.TimeoutException as exc:
            backend.record_missed_probe(f"no answer to /health: {type(exc).__name__}", self._misses_to_eject)
        except (httpx.HTTPError, ValueError) as exc:
            backend.record_probe(False, error=f"{type(exc).__name__}: {exc}")
        self._pool.review(backend)
        if backend.state is not before:
            level = logging.INFO if backend.state is BackendState.HEALTHY else logging.WARNING
            log.log(level, "worker %s is %s (%s)", backend.url, backend.state.value, backend.last_error or "ok")
        if model_before is not None and backend.model_name != model_before:
            log.warning("worker %s now serves model %s (was %s): it moves to that model's pool", backend.url,
                        backend.model_name, model_before)
        self._set_up(backend)
        if backend.needs_metadata():
            await self.fetch_metadata(backend)

    def _set_up(self, backend: Backend) -> None:
        model = backend.model_name or ""
        old = self._up_model.get(backend.url)
        if old is not None and old != model:
            self._metrics.backend_up.remove(backend.url, old)
        self._up_model[backend.url] = model
        self._metrics.backend_up.labels(backend.url, model).set(1 if backend.in_rotation else 0)

    async def fetch_metadata(self, backend: Backend) -> None:
        try:
            response = await self._client.get(f"{backend.url}/metadata")
            response.raise_for_status()
            metadata = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("worker %s: no model metadata (%s); trying again at the next probe", backend.url, exc)
            return
        # One input, as the model contract has: jobs and the docs read inputs[0].
        if isinstance(metadata, dict) and isinstance(metadata.get("inputs"), list) and len(metadata["inputs"]) == 1:
            backend.metadata = metadata
            log.info("worker %s serves model %s version %s", backend.url, metadata.get("name"),
                     metadata.get("version"))

    async def probe_all(self) -> None:
        if time.monotonic() - self._last_resolve >= self._resolve_interval_s:
            await self.refresh_backends()
        await asyncio.gather(*(self.probe(backend) for backend in self._pool.backends))

    async def run(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a bug here must not stop the checks for good
                log.exception("health check round failed")
            await asyncio.sleep(self._interval_s)

    async def aclose(self) -> None:
        await self._client.aclose()
