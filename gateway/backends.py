"""The workers the gateway balances over, and the state of each.

A backend's state machine::

    unknown ──probe ok──> healthy ──probe fails / connection refused──> unhealthy
       │                     ^                                              │
       └──probe fails──> unhealthy ──────────── probe ok ──────────────────┘

Only healthy backends receive requests (readiness, not mere liveness: a
worker answers /health with 503 until its model is warm). A probe that gets
no answer in time counts as failed only after ``misses_to_eject`` in a row: a
worker busy under load answers slowly, and ejecting the only one would turn
slow answers into 503s. A refused connection or a non-200 answer ejects at once.

Passive outlier ejection: the proxy reports each try's outcome; a backend
whose tries fail ``failures_to_eject`` times in a row (5xx other than 503, a
per-try timeout, a dropped connection) leaves rotation until a probe passes,
so a worker whose /health is fine but whose predictions fail or hang stops
taking requests between probes.

Model versions: a worker's /health says which versions it serves (``serving``). Once the
gateway knows what the registry wants served (``BackendPool.expect``, from the reconciler and
the activation), a healthy worker joins rotation only when it serves that, and one serving the
files it was started with (origin ``start``) stays out until it has been told the registry's
state: a restarted worker never answers with its start files. A worker already in rotation stays
in while an activation switches the workers one by one.

Several models: each worker serves one model and names it in its /health (``model_name``). The
backends are grouped by that name into one pool per model: a request for a model is balanced over
that model's workers only (its own round robin, in-flight bounds and ejections), and a worker that
restarts with another model moves to that model's pool at its next probe. The default model (the
DEFAULT_MODEL setting, else the model of the first worker, in WORKERS order, that reported one)
answers the routes that name no model. Workers that report no model name (before any probe) form
no pool; while no worker reported a model at all, requests go to any worker.

Two balancers: round robin (the default) and least outstanding requests,
which sends each request to the backend with the fewest in flight (ties in
round-robin order), so a slow worker gets fewer requests instead of an equal share.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any


class BackendState(str, enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(eq=False)
class Backend:
    url: str
    #: The configured entry it came from, e.g. ``worker:8000`` for ``http://172.18.0.5:8000``.
    source: str = ""
    state: BackendState = BackendState.UNKNOWN
    in_flight: int = 0
    last_probe_at: float | None = None  # wall-clock, for display only
    last_error: str | None = None
    #: Consecutive probes that got no answer in time.
    missed_probes: int = 0
    #: Consecutive proxied tries that failed (passive outlier detection).
    failed_tries: int = 0
    #: What the worker's /health said last (worker id, model name and version, device).
    info: dict[str, Any] = field(default_factory=dict)
    #: What its /metadata said: the served model's contract (fetched when the model changes).
    metadata: dict[str, Any] | None = None
    #: Kept out of rotation while healthy: it serves its start files, not what the registry wants.
    held: bool = False

    def needs_metadata(self) -> bool:
        """Healthy, and the metadata is missing or of another model than /health reports."""
        if not self.healthy:
            return False
        served = (self.info.get("model_name"), self.info.get("model_version"))
        return self.metadata is None or served != (self.metadata.get("name"), self.metadata.get("version"))

    @property
    def healthy(self) -> bool:
        return self.state is BackendState.HEALTHY

    @property
    def in_rotation(self) -> bool:
        """Takes requests: healthy and not held (see the module docstring)."""
        return self.healthy and not self.held

    @property
    def model_name(self) -> str | None:
        return self.info.get("model_name")

    @property
    def serving(self) -> dict[str, Any] | None:
        """The versions it serves, as its /health reports them; None from a worker that does not manage versions."""
        serving = self.info.get("serving")
        return serving if isinstance(serving, dict) else None

    def record_probe(self, ok: bool, info: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.last_probe_at = time.time()
        self.missed_probes = 0
        if info:
            self.info = info
        self.state = BackendState.HEALTHY if ok else BackendState.UNHEALTHY
        self.last_error = None if ok else error
        if ok:
            self.failed_tries = 0

    def record_missed_probe(self, error: str, misses_to_eject: int) -> None:
        """A probe timed out: eject only after ``misses_to_eject`` in a row."""
        self.last_probe_at = time.time()
        self.missed_probes += 1
        if self.state is not BackendState.HEALTHY or self.missed_probes >= misses_to_eject:
            self.state = BackendState.UNHEALTHY
            self.last_error = error

    def record_try(self, ok: bool, error: str, failures_to_eject: int, requests: int = 1) -> bool:
        """A proxied try's outcome; True when this failure ejects the backend (an outlier).

        ``requests``: the client requests the try carried (a batch gathered by the gateway fails them all).
        """
        if ok:
            self.failed_tries = 0
            return False
        self.failed_tries += requests
        if self.healthy and self.failed_tries >= failures_to_eject:
            self.eject(f"{self.failed_tries} failed requests in a row, the last: {error}")
            return True
        return False

    def eject(self, reason: str) -> None:
        """Passive health check: take it out of rotation until a probe passes."""
        self.state = BackendState.UNHEALTHY
        self.last_error = reason

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "source": self.source,
            "state": self.state.value,
            "in_flight": self.in_flight,
            "failed_tries": self.failed_tries,
            "last_probe": self.last_probe_at,
            "last_error": self.last_error,
            "worker_id": self.info.get("worker_id"),
            "model_name": self.info.get("model_name"),
            "model_version": self.info.get("model_version"),
            "device": self.info.get("device"),
            "serving": self.serving,
            "in_rotation": self.in_rotation,
        }


def serves(serving: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether a worker's reported serving state is the registry's: the same versions, share and loaded flag."""
    if serving.get("origin") == "start":
        return False
    keys = ("active", "canary", "loaded") + (("canary_traffic",) if expected.get("canary") else ())
    return all(serving.get(key) == expected.get(key) for key in keys)


class NoHealthyBackend(Exception):
    """No backend is healthy (and not already tried)."""


class AllBackendsBusy(Exception):
    """Every healthy backend is at its in-flight bound."""


BALANCERS = ("round_robin", "least_outstanding")


class BackendPool:
    """Round robin or least outstanding over the healthy backends of one model, bounded in flight per backend."""

    def __init__(self, max_in_flight: int, balancer: str = "round_robin", default_model: str | None = None) -> None:
        if balancer not in BALANCERS:
            raise ValueError(f"balancer must be one of {', '.join(BALANCERS)}, not {balancer!r}")
        self._backends: list[Backend] = []
        self._max_in_flight = max_in_flight
        self._least_outstanding = balancer == "least_outstanding"
        #: Per model name (None: no model known yet), where its round robin stands.
        self._next: dict[str | None, int] = {}
        self._default_model = default_model
        #: Per model name, the serving state the registry wants (active, canary, canary_traffic, loaded).
        self._expected: dict[str, dict[str, Any]] = {}
        #: Until the registry has been asked once (or failed to answer), a worker on its start files waits.
        self.registry_checked = False

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    def replace(self, wanted: list[tuple[str, str]]) -> None:
        """Set the backend list to ``(url, source)`` pairs, keeping the state of known URLs."""
        known = {backend.url: backend for backend in self._backends}
        self._backends = [known.get(url) or Backend(url=url, source=source) for url, source in wanted]

    def models(self) -> list[str]:
        """The model names the workers report, in WORKERS order: one pool each (a pool may have no healthy worker)."""
        return list(dict.fromkeys(backend.model_name for backend in self._backends if backend.model_name))

    def serves(self, model_name: str) -> bool:
        """Whether some worker reports ``model_name`` (cheaper than ``models()``: no list, per request)."""
        return any(backend.info.get("model_name") == model_name for backend in self._backends)

    def default_model(self) -> str | None:
        """DEFAULT_MODEL, else the model of the first worker that reported one; None before any did."""
        if self._default_model is not None:
            return self._default_model
        return next((backend.model_name for backend in self._backends if backend.model_name), None)

    def pool(self, model_name: str | None) -> list[Backend]:
        """The backends of ``model_name``; None: every backend (no worker has reported a model yet)."""
        if model_name is None:
            return list(self._backends)
        return [backend for backend in self._backends if backend.model_name == model_name]

    def expect(self, model_name: str, state: dict[str, Any]) -> None:
        """What the registry wants ``model_name``'s workers to serve; every backend is reviewed against it."""
        self._expected[model_name] = dict(state)
        for backend in self._backends:
            self.review(backend)

    def forget(self, model_name: str) -> None:
        """Stop holding ``model_name``'s workers to a registry state (it cannot be reached to push it)."""
        self._expected.pop(model_name, None)
        for backend in self._backends:
            self.review(backend)

    def expected(self, model_name: str) -> dict[str, Any] | None:
        return self._expected.get(model_name)

    def review(self, backend: Backend) -> None:
        """Hold a healthy backend out of rotation while it serves its start files and the registry wants
        something (or has not been asked yet); let it in once it serves what the registry wants.

        A backend in rotation whose versions differ while on registry versions stays in: an activation
        switches the workers one after the other, and the reconciler pushes a stale one within a round.
        """
        serving = backend.serving
        if not backend.healthy:
            return
        expected = self._expected.get(backend.model_name or "")
        if serving is None:
            backend.held = False
        elif expected is None:
            backend.held = not self.registry_checked and serving.get("origin") == "start"
        elif serves(serving, expected):
            backend.held = False
        elif serving.get("origin") == "start":
            backend.held = True

    def choose(
        self, model_name: str | None = None, exclude: frozenset[Backend] | set[Backend] = frozenset(),
        least_outstanding: bool = False,
    ) -> Backend:
        """The next healthy backend of ``model_name``'s pool with room, by the balancer (or least outstanding
        when asked); raises if none. None: any backend (no worker has reported a model yet)."""
        candidates = [b for b in self._backends if b.in_rotation and b not in exclude
                      and (model_name is None or b.info.get("model_name") == model_name)]
        if not candidates:
            raise NoHealthyBackend("no healthy worker" if model_name is None else
                                   f"no healthy worker serves model {model_name!r}")
        turn = self._next.get(model_name, 0)
        self._next[model_name] = turn + 1
        if self._least_outstanding or least_outstanding:
            start = turn % len(candidates)
            backend = min(candidates[start:] + candidates[:start], key=lambda b: b.in_flight)
            if backend.in_flight < self._max_in_flight:
                return backend
            raise AllBackendsBusy(f"every healthy worker has {self._max_in_flight} requests in flight")
        for step in range(len(candidates)):
            backend = candidates[(turn + step) % len(candidates)]
            if backend.in_flight < self._max_in_flight:
                self._next[model_name] = turn + step + 1
                return backend
        raise AllBackendsBusy(f"every healthy worker has {self._max_in_flight} requests in flight")

    def served_model(self, model_name: str | None = None) -> dict[str, Any] | None:
        """The metadata most healthy workers of ``model_name`` (None: the default model) publish, or None
        before any did."""
        counts: dict[tuple[Any, Any], int] = {}
        found: dict[tuple[Any, Any], dict[str, Any]] = {}
        for backend in self.pool(model_name or self.default_model()):
            if backend.healthy and backend.metadata is not None:
                key = (backend.metadata.get("name"), backend.metadata.get("version"))
                counts[key] = counts.get(key, 0) + 1
                found.setdefault(key, backend.metadata)
        return found[max(counts, key=counts.__getitem__)] if counts else None

    def served_models(self) -> dict[str, dict[str, Any]]:
        """Per served model name, in WORKERS order, the metadata its workers publish (those that did)."""
        found = {name: self.served_model(name) for name in self.models()}
        return {name: metadata for name, metadata in found.items() if metadata is not None}

    def summary(self, model_name: str | None = None) -> tuple[int, int]:
        """(alive, total) of ``model_name``'s pool (None: every backend): alive are the backends in rotation."""
        backends = self.pool(model_name)
        return sum(b.in_rotation for b in backends), len(backends)
