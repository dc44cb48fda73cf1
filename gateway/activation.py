"""Changing which version of a model serves, on every worker at once or nowhere.

A change (activate, canary, rollback, the protocol's load and unload, a train
job's promotion, the reconciler's push to one worker) goes:

1. the registry's serving state, and the files of every version the change
   names (checksums verified: a corrupt version never reaches a worker);
2. ``PUT /admin/versions/{v}`` on every healthy worker of the model, in
   parallel, within ACTIVATION_TIMEOUT_S: each loads the version beside the one
   it serves, checks it and compiles what new shapes need, off its serving path;
3. if any worker refuses or stays silent, the copies just loaded are dropped
   and nothing changes anywhere: the answer names each worker and why;
4. ``set_serving`` in the registry: the commit, a compare-and-set on the
   model's generation, so of two changes at once in two gateways one gets 409;
5. ``PUT /admin/serving`` on every worker, with the committed generation: each switches between two
   batches, and refuses a generation older than the one it serves, so that when two gateways' pushes
   cross (a change and another gateway's reconciler) the older state never lands last.

One change per model at a time in a gateway (an asyncio lock: a second one
waits its turn). The workers' admin API is internal: the gateway calls it
here and never proxies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from common.artifact_archive import CONTENT_TYPE, pack
from gateway.backends import Backend, BackendPool
from gateway.errors import GatewayError, NoWorkerAvailable
from jobs.errors import JobError
from jobs.registry import Registry, ServingState

log = logging.getLogger(__name__)
MODEL_NAME_HEADER = "X-Model-Name"


@dataclass(frozen=True)
class Target:
    """A serving state as the workers take it (``PUT /admin/serving``)."""

    active: str
    canary: str | None = None
    canary_traffic: int = 0
    loaded: bool = True
    #: The registry's generation of the state, once committed: a worker refuses one older than it serves.
    generation: int | None = None

    @classmethod
    def of(cls, state: ServingState) -> Target:
        return cls(state.active, state.canary, state.canary_traffic, state.loaded, state.generation)

    def wire(self) -> dict[str, Any]:
        return {"active": self.active, "canary": self.canary, "canary_traffic": self.canary_traffic,
                "loaded": self.loaded}

    def versions(self) -> list[str]:
        """The versions a worker must hold loaded to serve this (none while unloaded)."""
        if not self.loaded:
            return []
        return [self.active] + ([self.canary] if self.canary else [])


@dataclass
class WorkerOutcome:
    """One worker's part in a change, as the answer lists it."""

    worker: str
    ok: bool = True
    compilations: int = 0
    load_ms: float = 0.0
    error: str | None = None
    refused: bool = False  # the worker checked the version and said no (422), as opposed to not answering
    loaded: list[str] = field(default_factory=list)  # versions this change loaded on it

    def describe(self) -> dict[str, Any]:
        return {"worker": self.worker, "ok": self.ok, "compilations": self.compilations,
                "load_ms": round(self.load_ms, 1), "error": self.error}


class ActivationFailed(GatewayError):
    """A worker refused the version (422) or did not answer in time (503): nothing changed anywhere."""

    code = "activation_failed"

    def __init__(self, message: str, outcomes: list[WorkerOutcome], refused: bool) -> None:
        super().__init__(message)
        self.status_code = 422 if refused else 503
        self.workers = [outcome.describe() for outcome in outcomes]


class VersionlessModel(GatewayError):
    """The model has no versions (or no active one) in the registry."""

    status_code = 404
    code = "model_not_found"


class ChangeRefused(GatewayError):
    """The change asked for makes no sense in the model's state (no earlier version, canary of the active...)."""

    status_code = 409
    code = "change_refused"


def _worker_error(response: httpx.Response) -> str:
    """The message of a worker's error answer, else its status and text."""
    try:
        body = response.json()
        error = body["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return f"answered {response.status_code}: {response.text[:200]}"


class WorkerAdmin:
    """The workers' internal admin API: load, switch, drop versions, and the files a worker started with."""

    def __init__(self, client: httpx.AsyncClient, token: str = "") -> None:
        """``token``: the workers' WORKER_ADMIN_TOKEN, sent as a bearer token on every call; empty: none."""
        self.client = client
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    async def load(self, url: str, model_name: str, version: str, archive: bytes, timeout_s: float) -> dict[str, Any]:
        """Load and check ``version``; its answer ({"version", "compilations", "load_ms"}) or an
        ``httpx.HTTPStatusError`` (422: refused, with the reason) / ``httpx.HTTPError``."""
        response = await self.client.put(
            f"{url}/admin/versions/{version}", content=archive, timeout=timeout_s,
            headers={"Content-Type": CONTENT_TYPE, MODEL_NAME_HEADER: model_name, **self._auth},
        )
        return self._json(response)

    async def serve(self, url: str, target: Target, timeout_s: float) -> dict[str, Any]:
        body = {**target.wire(), "generation": target.generation}
        return self._json(await self.client.put(f"{url}/admin/serving", json=body, timeout=timeout_s,
                                                headers=self._auth))

    async def drop(self, url: str, version: str, timeout_s: float) -> None:
        self._json(await self.client.delete(f"{url}/admin/versions/{version}", timeout=timeout_s, headers=self._auth))

    async def artifacts(self, url: str, timeout_s: float) -> bytes:
        response = await self.client.get(f"{url}/admin/artifacts", timeout=timeout_s, headers=self._auth)
        response.raise_for_status()
        return response.content

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise httpx.HTTPStatusError(_worker_error(response), request=response.request, response=response)
        body = response.json()
        return body if isinstance(body, dict) else {}


def _stale(exc: Exception) -> bool:
    """Whether a worker refused a serving state as older than the one it serves (409 stale_generation)."""
    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code != 409:
        return False
    try:
        return exc.response.json()["error"]["code"] == "stale_generation"
    except (ValueError, KeyError, TypeError):
        return False


def _failure(exc: Exception, timeout_s: float) -> tuple[str, bool]:
    """(why, refused) of a failed admin call."""
    if isinstance(exc, httpx.HTTPStatusError):
        return str(exc), exc.response.status_code in (409, 422)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"no answer within the {timeout_s:g} s deadline", False
    return f"{type(exc).__name__}: {exc}", False


class Activation:
    """Every change of what a model serves (see the module docstring)."""

    def __init__(self, registry: Registry, pool: BackendPool, admin: WorkerAdmin, timeout_s: float) -> None:
        self.registry = registry
        self._pool = pool
        self.admin = admin
        self._timeout_s = timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    def busy(self, model_name: str) -> bool:
        lock = self._locks.get(model_name)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def lock(self, model_name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(model_name, asyncio.Lock()):
            yield

    def workers(self, model_name: str) -> list[Backend]:
        """The healthy workers serving ``model_name`` that manage versions."""
        return [backend for backend in self._pool.backends
                if backend.healthy and backend.model_name == model_name and backend.serving is not None]

    # --- the changes ------------------------------------------------------------------------------------------

    async def activate(self, model_name: str, version: str, traffic: int | None, by_key: str | None,
                       action: str | None = None) -> dict[str, Any]:
        """``traffic`` None or 100: a full switch; 1..99: ``version`` as the canary with that share."""
        await self.registry.manifest(model_name, version)  # 404 for a version the model does not have

        def plan(current: ServingState | None) -> Target:
            if traffic is None or traffic == 100:
                return Target(version)
            if current is None:
                raise ChangeRefused(f"model {model_name!r} has no active version to run a canary beside; "
                                    "activate one first")
            if current.active == version:
                raise ChangeRefused(f"version {version} is the active version; a canary must be another one")
            return Target(current.active, version, traffic)

        canary = traffic is not None and traffic != 100
        return await self.change(model_name, plan, by_key, action or ("canary" if canary else "activate"))

    async def rollback(self, model_name: str, by_key: str | None) -> dict[str, Any]:
        """Back to the version active before the current one, as a full switch."""
        version = await self.registry.rollback_target(model_name)
        if version is None:
            raise ChangeRefused(f"model {model_name!r} has no earlier active version to roll back to")
        return await self.change(model_name, lambda current: Target(version), by_key, "rollback")

    async def load(self, model_name: str, by_key: str | None) -> dict[str, Any]:
        """The protocol's load: serve again after an unload; a model never activated gets its newest version."""
        versions = await self.registry.versions(model_name)
        if not versions:
            raise VersionlessModel(f"model {model_name!r} has no versions")
        newest = versions[-1].version

        def plan(current: ServingState | None) -> Target:
            if current is None:
                return Target(newest)
            return Target(current.active, current.canary, current.canary_traffic, loaded=True)

        return await self.change(model_name, plan, by_key, "load")

    async def unload(self, model_name: str, by_key: str | None) -> dict[str, Any]:
        """The protocol's unload: the model answers nothing (404) until it is loaded again."""

        def plan(current: ServingState | None) -> Target:
            if current is None:
                raise VersionlessModel(f"model {model_name!r} has no active version to unload")
            return Target(current.active, current.canary, current.canary_traffic, loaded=False)

        return await self.change(model_name, plan, by_key, "unload")

    async def change(self, model_name: str, plan: Callable[[ServingState | None], Target], by_key: str | None,
                     action: str) -> dict[str, Any]:
        """Load what ``plan`` names on every worker, commit it, switch every worker (the module docstring)."""
        async with self.lock(model_name):
            started = time.monotonic()
            deadline = started + self._timeout_s
            current = await self.registry.serving(model_name)
            target = plan(current)
            workers = self.workers(model_name)
            if not workers:
                raise NoWorkerAvailable(f"no healthy worker serves model {model_name!r}; nothing was changed")
            archives = await self.archives(model_name, target.versions())
            outcomes = await asyncio.gather(*(self._load(backend, model_name, target, archives, deadline)
                                              for backend in workers))
            failed = [outcome for outcome in outcomes if not outcome.ok]
            if failed:
                await self._drop(workers, outcomes)
                reasons = "; ".join(f"worker {outcome.worker}: {outcome.error}" for outcome in failed)
                raise ActivationFailed(f"{action} of model {model_name!r} refused, nothing changed: {reasons}",
                                       list(outcomes), refused=any(outcome.refused for outcome in failed))
            try:
                state = await self.registry.set_serving(
                    model_name, **target.wire(), expected_generation=current.generation if current else None,
                    by_key=by_key, action=action,
                )
            except JobError:
                await self._drop(workers, outcomes)
                raise
            target = dataclasses.replace(target, generation=state.generation)
            switched = await asyncio.gather(*(self._switch(backend, outcome, target, deadline)
                                              for backend, outcome in zip(workers, outcomes, strict=True)))
            self._pool.expect(model_name, target.wire())
            took_ms = (time.monotonic() - started) * 1000
            log.info("model %s: %s -> active %s, canary %s (%d%%), loaded %s, in %.0f ms", model_name, action,
                     target.active, target.canary, target.canary_traffic, target.loaded, took_ms)
            return {"model_name": model_name, **target.wire(), "generation": state.generation,
                    "workers": [outcome.describe() for outcome in switched], "took_ms": round(took_ms, 1)}

    async def push(self, backend: Backend, model_name: str, target: Target,
                   archives: dict[str, bytes] | None = None) -> WorkerOutcome:
        """The reconciler's change of one worker to the registry's state (the caller holds the model's lock)."""
        deadline = time.monotonic() + self._timeout_s
        archives = archives if archives is not None else await self.archives(model_name, target.versions())
        outcome = await self._load(backend, model_name, target, archives, deadline)
        if outcome.ok:
            outcome = await self._switch(backend, outcome, target, deadline)
        else:
            await self._drop([backend], [outcome])
        return outcome

    async def archives(self, model_name: str, versions: Iterable[str]) -> dict[str, bytes]:
        """Each version's files as the workers take them, read and checked by the registry."""
        return {version: pack(await self.registry.files(model_name, version)) for version in versions}

    # --- one worker -------------------------------------------------------------------------------------------

    def _held_versions(self, backend: Backend) -> set[str]:
        """Versions the worker has loaded from the registry already (it serves them)."""
        serving = backend.serving or {}
        if serving.get("origin") != "registry":
            return set()
        return {version for version in (serving.get("active"), serving.get("canary")) if version}

    async def _load(self, backend: Backend, model_name: str, target: Target, archives: Mapping[str, bytes],
                    deadline: float) -> WorkerOutcome:
        outcome = WorkerOutcome(backend.url)
        held = self._held_versions(backend)
        for version in target.versions():
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                # httpx's timeouts bound each read, not the whole call: the deadline is the call's.
                answer = await asyncio.wait_for(
                    self.admin.load(backend.url, model_name, version, archives[version], remaining), remaining)
            except (httpx.HTTPError, TimeoutError) as exc:
                outcome.ok = False
                outcome.error, outcome.refused = _failure(exc, self._timeout_s)
                outcome.error = f"version {version}: {outcome.error}"
                return outcome
            if version not in held:
                outcome.loaded.append(version)
            outcome.compilations += int(answer.get("compilations") or 0)
            outcome.load_ms += float(answer.get("load_ms") or 0.0)
        return outcome

    async def _switch(self, backend: Backend, outcome: WorkerOutcome, target: Target,
                      deadline: float) -> WorkerOutcome:
        try:
            remaining = max(0.1, deadline - time.monotonic())
            answer = await asyncio.wait_for(self.admin.serve(backend.url, target, remaining), remaining)
        except (httpx.HTTPError, TimeoutError) as exc:
            outcome.ok = False
            if _stale(exc):  # a newer change reached the worker first: it serves that one, and stays in rotation
                outcome.error = f"switch: {_failure(exc, self._timeout_s)[0]}"
                log.info("worker %s kept a newer serving state: %s", backend.url, outcome.error)
                return outcome
            outcome.error = f"switch: {_failure(exc, self._timeout_s)[0]} (the reconciler tries again)"
            log.warning("worker %s did not switch: %s", backend.url, outcome.error)
            backend.held = True  # out of rotation until it serves the new state: no answer from the old one
            return outcome
        # What it serves now, until its next probe says so too.
        backend.info["serving"] = {**target.wire(), **answer, "origin": "registry"}
        self._pool.review(backend)
        return outcome

    async def _drop(self, workers: list[Backend], outcomes: Iterable[WorkerOutcome]) -> None:
        """Unload the copies a failed change loaded; a worker that misses this drops them at the next change."""
        calls = [self.admin.drop(backend.url, version, self._timeout_s)
                 for backend, outcome in zip(workers, outcomes, strict=True) for version in outcome.loaded]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("could not drop a version loaded for a failed change: %s", result)
