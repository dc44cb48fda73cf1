"""Keeps every worker on the registry's versions, whatever notification it missed.

Each round (every MODEL_RECONCILE_S), for each model a healthy worker serves:

- a model with no version in the registry gets the files a worker was started
  with (``GET /admin/artifacts``) as its version 1, activated ("first start"): a
  fresh deployment serves exactly what it did before versions existed. Of
  several gateways doing this at once, one registers (``only_if_empty``);
- a worker whose reported versions differ from the registry's state, or that
  still serves its start files, is pushed that state (load, then switch). Until
  then one on its start files stays out of rotation (gateway/backends.py);
- the pool learns the state, so a worker that restarts later is held at once.

Then it takes the train jobs' pending promotions, one at a time, runs each
through the activation and records the outcome the job waits for.

While the job database or the store does not answer, the round changes
nothing: workers keep serving what they serve, and the pool keeps the last
state it knew. Only when every worker of a model restarted meanwhile (none is
in rotation) do they serve the files they started with, rather than nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx

from common.artifact_archive import ArchiveError, unpack
from gateway.activation import Activation, Target
from gateway.backends import Backend, BackendPool, serves
from gateway.errors import GatewayError
from jobs.errors import JobError, JobsUnavailable

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, activation: Activation, pool: BackendPool, *, interval_s: float, max_artifact_bytes: int,
                 timeout_s: float) -> None:
        self._activation = activation
        self._registry = activation.registry
        self._pool = pool
        self._interval_s = interval_s
        self._max_artifact_bytes = max_artifact_bytes
        self._timeout_s = timeout_s
        self._outage_logged = False
        self._stopping: asyncio.Event | None = None

    async def run(self) -> None:
        """Rounds until :meth:`stop`: a round is never cut off mid-statement (a cancelled database call can
        outlive the event loop in its driver's thread)."""
        self._stopping = asyncio.Event()
        while not self._stopping.is_set():
            try:
                await self.round()
            except Exception:  # a bug here must not stop reconciling for good
                log.exception("model reconcile round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def round(self) -> None:
        """One pass over the served models, then the pending promotions."""
        served = sorted({backend.model_name for backend in self._pool.backends
                         if backend.healthy and backend.serving is not None and backend.model_name})
        try:
            for model_name in served:
                try:
                    await self.reconcile(model_name)
                except JobError as exc:
                    if isinstance(exc, JobsUnavailable):
                        raise
                    log.error("model %s: cannot reconcile its workers: %s", model_name, exc.message)
            if served:  # a promotion needs workers; without any the database is left alone
                await self.promote_pending()
        except JobsUnavailable as exc:
            if not self._outage_logged:
                log.warning("model registry unavailable, workers keep what they serve: %s", exc.message)
                self._outage_logged = True
            self._serve_what_can_be_served(served)
            return
        finally:
            self._first_round_done()
        if self._outage_logged:
            log.info("model registry available again")
            self._outage_logged = False

    def _serve_what_can_be_served(self, served: list[str]) -> None:
        """In a registry outage, a model none of whose workers is in rotation (all restarted on their start
        files) is served from those files rather than not at all, until the registry is back."""
        for model_name in served:
            workers = self._activation.workers(model_name)
            if workers and not any(backend.in_rotation for backend in workers):
                log.warning("model %s: no worker serves the registry's versions and the registry is unavailable; "
                            "serving the files the workers started with until it is back", model_name)
                self._pool.forget(model_name)

    def _first_round_done(self) -> None:
        """Workers on their start files were held until the registry was asked once (answered or not)."""
        if not self._pool.registry_checked:
            self._pool.registry_checked = True
            for backend in self._pool.backends:
                self._pool.review(backend)

    async def reconcile(self, model_name: str) -> None:
        if self._activation.busy(model_name):
            return  # a change is under way; it sets every worker itself
        async with self._activation.lock(model_name):
            # What the workers said before the registry is read: a worker state seen then was set by a change
            # committed before, so the registry's state is at least as new and pushing it never goes back.
            workers = self._activation.workers(model_name)
            reported = [dict(backend.serving or {}) for backend in workers]
            state = await self._registry.serving(model_name)
            if state is None:
                state = await self._first_start(model_name)
                if state is None:
                    return
            target = Target.of(state)
            stale = [backend for backend, serving in zip(workers, reported, strict=True)
                     if not serves(serving, target.wire())]
            if stale:
                await self._push(model_name, target, stale, state.generation)
            self._pool.expect(model_name, target.wire())

    async def _push(self, model_name: str, target: Target, stale: list[Backend], generation: int) -> None:
        archives = await self._activation.archives(model_name, target.versions())
        latest = await self._registry.serving(model_name)
        if latest is None or latest.generation != generation:
            return  # another gateway changed it meanwhile and sets the workers itself; the next round checks
        outcomes = await asyncio.gather(*(self._activation.push(backend, model_name, target, archives)
                                          for backend in stale))
        for backend, outcome in zip(stale, outcomes, strict=True):
            if outcome.ok:
                log.info("worker %s now serves model %s version %s (canary %s)", backend.url, model_name,
                         target.active, target.canary)
            else:
                log.warning("worker %s: could not push model %s's state: %s", backend.url, model_name, outcome.error)

    async def _first_start(self, model_name: str) -> Any:
        """Register a worker's start files as the model's first version and activate it (None: not this round)."""
        versions = await self._registry.versions(model_name)
        if versions:  # versions but never activated (an upload before the first start): the newest serves
            version = versions[-1].version
        else:
            manifest = await self._register_start_files(model_name)
            if manifest is None:
                return None
            version = manifest.version
        try:
            return await self._registry.set_serving(
                model_name, active=version, canary=None, canary_traffic=0, loaded=True, expected_generation=None,
                by_key=None, action="first start",
            )
        except JobError as exc:
            if exc.status_code == 409:  # another gateway activated it meanwhile: the next round reads its state
                return None
            raise

    async def _register_start_files(self, model_name: str) -> Any:
        workers = [backend for backend in self._activation.workers(model_name)
                   if (backend.serving or {}).get("origin") == "start"]
        if not workers:
            return None
        backend = workers[0]
        try:
            files = unpack(await self._activation.admin.artifacts(backend.url, self._timeout_s),
                           self._max_artifact_bytes)
        except (ArchiveError, httpx.HTTPError) as exc:  # tried again at the next round
            log.warning("model %s: could not read worker %s's start files: %s", model_name, backend.url, exc)
            return None
        metadata = backend.metadata or {}
        manifest = await self._registry.register(
            model_name, files, source="shipped", inputs=metadata.get("inputs"), outputs=metadata.get("outputs"),
            only_if_empty=True,
        )
        if manifest is not None:
            log.info("model %s: the files worker %s started with are version %s", model_name, backend.url,
                     manifest.version)
        return manifest

    async def promote_pending(self) -> None:
        """Run the train jobs' promotions, one at a time, recording each outcome."""
        while (promotion := await self._registry.take_promotion()) is not None:
            error: str | None = None
            try:
                await self._activation.activate(promotion.model_name, promotion.version, None, None, "promote")
            except (GatewayError, JobError) as exc:
                error = exc.message
            log.info("promotion of model %s version %s (job %s): %s", promotion.model_name, promotion.version,
                     promotion.job_id, error or "active")
            await self._registry.finish_promotion(promotion.job_id, error)
