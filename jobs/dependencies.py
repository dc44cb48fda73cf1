"""A sidecar lives through its dependencies' outages: it waits, says so, and resumes.

The job database, the broker and the store go away now and then (a restart, a
failover, a full disk). A sidecar that gave up at the first error would spend
a job's JOB_MAX_DELIVERIES on an outage that has nothing to do with the job,
or exit and be restarted in a loop. Instead a call that meets an outage
(``JobsUnavailable``) is tried again, with capped and jittered backoff, until
it succeeds or its dependency has been down for that dependency's window.

:class:`Dependencies` keeps the state of each one: an outage is logged once
when it starts and once when it ends (not once per waiting job), and exported
as ``jobs_sidecar_dependency_up{dependency}`` on the sidecar's /metrics, which
is also its health. :class:`PatientDatabase` puts the database behind it, so
every record read and write of the sidecar waits an outage out the same way.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Gauge

from jobs.database import Database
from jobs.errors import JobsUnavailable

log = logging.getLogger("jobs.dependencies")
T = TypeVar("T")

#: First and longest waits between two tries of a call that met an outage.
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.2, 2.0


class Outages(Protocol):
    """Told when an outage of a dependency starts and ends (:class:`Dependencies`)."""

    def down(self, name: str, error: BaseException) -> None: ...

    def up(self, name: str) -> None: ...


async def patiently(name: str, window_s: float, call: Callable[[], Awaitable[T]], outages: Outages | None = None) -> T:
    """``call()``, tried again while it meets an outage of ``name`` (a transient ``JobsUnavailable``), for at most
    ``window_s`` from the first try; ``outages`` is told when it starts and ends.

    Past the window the last ``JobsUnavailable`` is raised (the caller hands its job back); a refusal that trying
    again would not change (:class:`~jobs.errors.DependencyRefused`) at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window_s
    backoff = FIRST_BACKOFF_S
    while True:
        try:
            answer = await call()
        except JobsUnavailable as exc:
            left = deadline - loop.time()
            if not exc.transient or left <= 0:
                raise
            if outages is not None:
                outages.down(name, exc)
            await asyncio.sleep(min(left, backoff * random.uniform(0.5, 1.0)))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        else:
            if outages is not None:
                outages.up(name)
            return answer


class Dependencies:
    """Which dependencies are down, since when; the gauge and the log lines of their outages."""

    def __init__(self, registry: CollectorRegistry, names: tuple[str, ...] = ("database", "broker", "store")) -> None:
        self._up = Gauge("jobs_sidecar_dependency_up", "1 while the sidecar reaches the dependency, 0 in an outage.",
                         ["dependency"], registry=registry)
        self._down_since: dict[str, float] = {}
        for name in names:
            self._up.labels(name).set(1)

    def is_up(self, name: str) -> bool:
        return name not in self._down_since

    def down(self, name: str, error: BaseException) -> None:
        if name not in self._down_since:
            self._down_since[name] = asyncio.get_running_loop().time()
            self._up.labels(name).set(0)
            log.warning("the %s is unavailable (%s); jobs wait for it", name, _cause(error))

    def up(self, name: str) -> None:
        since = self._down_since.pop(name, None)
        if since is not None:
            self._up.labels(name).set(1)
            log.warning("the %s is back after %.1fs", name, asyncio.get_running_loop().time() - since)


def _cause(error: BaseException) -> str:
    """The error the dependency's adapter met (for the log; clients see only the short message)."""
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}"[:300]


class PatientDatabase:
    """A :class:`~jobs.database.Database` whose calls wait a database outage out (the sidecar's).

    Retrying a statement is safe here: the sidecar's writes set a job's state, and one that landed before its
    answer was lost lands again unchanged (or not at all, once the job finished).
    """

    def __init__(self, database: Database, dependencies: Dependencies, window_s: float) -> None:
        self._database = database
        self._dependencies = dependencies
        self._window_s = window_s

    async def _patiently(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        call = getattr(self._database, method)
        return await patiently("database", self._window_s, lambda: call(sql, *args), self._dependencies)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._patiently("execute", sql, args)  # type: ignore[no-any-return]

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self._patiently("fetch", sql, args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        return await self._patiently("fetchrow", sql, args)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._database.close()


def cancelling() -> bool:
    """Whether the running task was asked to stop: a loop that outlives every error must not outlive a cancel that
    a database driver turned into another error. (Python 3.10 cannot tell: False there.)"""
    task = asyncio.current_task()
    return task is not None and getattr(task, "cancelling", lambda: 0)() > 0
