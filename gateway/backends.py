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

    def needs_metadata(self) -> bool:
        """Healthy, and the metadata is missing or of another model than /health reports."""
        if not self.healthy:
            return False
        served = (self.info.get("model_name"), self.info.get("model_version"))
        return self.metadata is None or served != (self.metadata.get("name"), self.metadata.get("version"))

    @property
    def healthy(self) -> bool:
        return self.state is BackendState.HEALTHY

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
        }


class NoHealthyBackend(Exception):
    """No backend is healthy (and not already tried)."""


class AllBackendsBusy(Exception):
    """Every healthy backend is at its in-flight bound."""


BALANCERS = ("round_robin", "least_outstanding")


class BackendPool:
    """Round robin or least outstanding over healthy backends, bounded in flight per backend."""

    def __init__(self, max_in_flight: int, balancer: str = "round_robin") -> None:
        if balancer not in BALANCERS:
            raise ValueError(f"balancer must be one of {', '.join(BALANCERS)}, not {balancer!r}")
        self._backends: list[Backend] = []
        self._max_in_flight = max_in_flight
        self._least_outstanding = balancer == "least_outstanding"
        self._next = 0

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    def replace(self, wanted: list[tuple[str, str]]) -> None:
        """Set the backend list to ``(url, source)`` pairs, keeping the state of known URLs."""
        known = {backend.url: backend for backend in self._backends}
        self._backends = [known.get(url) or Backend(url=url, source=source) for url, source in wanted]

    def choose(
        self, exclude: frozenset[Backend] | set[Backend] = frozenset(), least_outstanding: bool = False
    ) -> Backend:
        """The next healthy backend with room, by the balancer (or least outstanding when asked); raises if none."""
        candidates = [b for b in self._backends if b.healthy and b not in exclude]
        if not candidates:
            raise NoHealthyBackend("no healthy worker")
        if self._least_outstanding or least_outstanding:
            start = self._next % len(candidates)
            self._next += 1
            backend = min(candidates[start:] + candidates[:start], key=lambda b: b.in_flight)
            if backend.in_flight < self._max_in_flight:
                return backend
            raise AllBackendsBusy(f"every healthy worker has {self._max_in_flight} requests in flight")
        for _ in range(len(candidates)):
            backend = candidates[self._next % len(candidates)]
            self._next += 1
            if backend.in_flight < self._max_in_flight:
                return backend
        raise AllBackendsBusy(f"every healthy worker has {self._max_in_flight} requests in flight")

    def served_model(self) -> dict[str, Any] | None:
        """The model metadata most healthy workers publish, or None before any did."""
        counts: dict[tuple[Any, Any], int] = {}
        found: dict[tuple[Any, Any], dict[str, Any]] = {}
        for backend in self._backends:
            if backend.healthy and backend.metadata is not None:
                key = (backend.metadata.get("name"), backend.metadata.get("version"))
                counts[key] = counts.get(key, 0) + 1
                found.setdefault(key, backend.metadata)
        return found[max(counts, key=counts.__getitem__)] if counts else None

    def summary(self) -> tuple[int, int]:
        """(alive, total)."""
        return sum(b.healthy for b in self._backends), len(self._backends)
