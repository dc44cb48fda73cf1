"""A bounded local spool of results computed while the artifact store is down.

A sidecar that computed a job's result but could not write it (the store stayed
down past SIDECAR_STORE_RETRY_S) keeps the result here and hands the job back.
When the job is delivered again, to it or to another sidecar of this machine
(or to it after a restart), the sidecar writes the kept result instead of
computing the job again, then drops it from the spool.

Use::

    spool = ResultSpool.from_settings(settings)
    kept = await spool.keep(job_id, body, model_name, model_version)  # False: over the bound, not kept
    spool.holds(job_id)                  # whether one is kept (a stat, for every job)
    spooled = await spool.take(job_id)   # Spooled(data, model_name, model_version), or None
    await spool.drop(job_id)             # once the result is written (or the job ended otherwise)
    await spool.sweep(records.finished_among)  # drop those of jobs finished meanwhile
    spool.job_ids(); spool.used_bytes()  # what is kept

``take`` reads without removing, so a crash between writing the result and
``drop`` loses nothing. Job ids are checked with :func:`jobs.records.check_job_id`
(a bad one raises ``JobNotFound``): they are file names here.

On disk: one file per job, ``<folder>/<job_id>.result``, one JSON line (the
model name and version that computed the result), then the result's bytes.
It is written to a temporary file in the same folder, flushed and renamed, so
a reader sees a whole result or none. The folder (SIDECAR_SPOOL_DIR, by default
JOBS_DIR/spool) is shared by the sidecars of one machine: writers take a lock
file, so SIDECAR_SPOOL_MAX_BYTES holds across them, and a temporary file found
under the lock was left by a crash and is removed. File I/O runs in a thread,
off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from jobs.records import check_job_id
from jobs.settings import JobsSettings

_SUFFIX = ".result"
_TEMPORARY = ".tmp"


@dataclass(frozen=True)
class Spooled:
    """A kept result: its bytes and the model (name, version) that computed them."""

    data: bytes
    model_name: str | None
    model_version: str | None


class ResultSpool:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: JobsSettings) -> ResultSpool:
        folder = settings.sidecar_spool_dir or settings.jobs_dir / "spool"
        return cls(folder, settings.sidecar_spool_max_bytes)

    async def keep(self, job_id: str, data: bytes, model_name: str | None = None,
                   model_version: str | None = None) -> bool:
        """Keep ``data`` as the job's result (replacing one kept before); False if it would pass the bound."""
        header = orjson.dumps({"model_name": model_name, "model_version": model_version}) + b"\n"
        return await asyncio.to_thread(self._keep, check_job_id(job_id), header, data)

    async def take(self, job_id: str) -> Spooled | None:
        """The job's kept result, None if there is none; it stays kept until :meth:`drop`."""
        return await asyncio.to_thread(self._take, self._path(job_id))

    def holds(self, job_id: str) -> bool:
        """Whether a result of the job is kept: one stat, cheap enough to ask for every job."""
        return self._path(job_id).exists()

    async def drop(self, job_id: str) -> None:
        await asyncio.to_thread(self._path(job_id).unlink, missing_ok=True)

    async def sweep(self, finished: Callable[[list[str]], Awaitable[set[str]]]) -> int:
        """Drop the results kept for jobs that ``finished(job_ids)`` says finished (their next delivery went to
        another machine, or they failed): how many. A sidecar sweeps when it starts."""
        job_ids = await asyncio.to_thread(self.job_ids)
        done = await finished(job_ids) if job_ids else set()
        for job_id in done:
            await self.drop(job_id)
        return len(done)

    def job_ids(self) -> list[str]:
        return sorted(path.name.removesuffix(_SUFFIX) for path in self.folder.glob(f"*{_SUFFIX}"))

    def used_bytes(self) -> int:
        total = 0
        for path in self.folder.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):  # dropped by another sidecar meanwhile
                total += path.stat().st_size
        return total

    def _path(self, job_id: str) -> Path:
        return self.folder / f"{check_job_id(job_id)}{_SUFFIX}"

    def _keep(self, job_id: str, header: bytes, data: bytes) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{job_id}{_SUFFIX}"
        with open(self.folder / ".lock", "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            for stale in self.folder.glob(f"*{_TEMPORARY}"):  # no writer holds the lock: a crash left it
                stale.unlink(missing_ok=True)
            try:
                replaced = path.stat().st_size
            except FileNotFoundError:
                replaced = 0
            if self.used_bytes() - replaced + len(header) + len(data) > self.max_bytes:
                return False
            temporary = self.folder / f"{job_id}{_TEMPORARY}"
            with open(temporary, "wb") as out:
                out.write(header)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        return True

    @staticmethod
    def _take(path: Path) -> Spooled | None:
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        header, _, data = content.partition(b"\n")
        meta = orjson.loads(header)
        return Spooled(data, meta["model_name"], meta["model_version"])
