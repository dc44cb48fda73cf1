"""``python -m jobs.sidecar``: runs jobs from the broker on the worker next to it.

For each delivery: read the job's record; skip it if the job already finished
(a redelivery after a crash) or was cancelled; mark it running; run its task
through the worker over loopback, in chunks, so jobs share the worker's
batching; write the result and the succeeded state (one database write); and
only then ack. A crash anywhere before the ack
means the message is delivered again, and a finished job is never run twice:
at-least-once delivery, exactly one visible result.

A failing attempt is retried (after JOB_RETRY_DELAY_S times its number) until
the broker dead-letters the message; the sidecar also reads the dead-letter
queue and marks those jobs failed with their last error.

SIGTERM or SIGINT: stop taking jobs, give running ones SIDECAR_SHUTDOWN_GRACE_S
to finish, hand back the rest to the broker, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import httpx
import orjson
import uvloop
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import BaseModel, ValidationError

from jobs.broker import Broker, Delivery, create_broker
from jobs.coalesce import Coalescer
from jobs.database import Database, create_database
from jobs.errors import InvalidJob, JobCancelled, TaskFailed
from jobs.metrics import JobsMetrics
from jobs.records import JobRecord, JobRecords
from jobs.schema import ErrorInfo, JobSpec, JobStatus, Progress, utc_now, validate
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from jobs.tasks import TASKS, TaskContext, import_task_modules

log = logging.getLogger("jobs.sidecar")
#: Progress is written at most this often; a cancel is looked for at every checkpoint.
PROGRESS_INTERVAL_S = 0.5


class Sidecar:
    def __init__(self, settings: JobsSettings, store: ArtifactStore, broker: Broker, database: Database,
                 metrics: JobsMetrics) -> None:
        self.settings = settings
        self.database = database
        self.records = JobRecords(database, store, settings)
        self.store = store
        self.broker = broker
        self.metrics = metrics
        key = {"Authorization": f"Bearer {settings.worker_api_key}"} if settings.worker_api_key else {}
        self.worker = httpx.AsyncClient(
            base_url=settings.worker_url, timeout=settings.worker_timeout_s, headers=key,
            limits=httpx.Limits(max_connections=settings.sidecar_worker_calls + 4),
        )
        self.coalescer = Coalescer(self.worker, settings.job_chunk_rows, settings.sidecar_worker_calls)
        self._slots = asyncio.Semaphore(settings.sidecar_concurrency)
        self._running: set[asyncio.Task[None]] = set()
        import_task_modules(settings.job_task_modules)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down as the module docstring says."""
        await self._wait_for_worker(stop)
        await self.broker.start()
        consumers = [
            asyncio.create_task(self._consume(), name="jobs"),
            asyncio.create_task(self._consume_dead_letters(), name="dead-letters"),
        ]
        log.info("consuming jobs for %s", self.settings.worker_url)
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, *consumers], return_when=asyncio.FIRST_COMPLETED)
            for consumer in consumers:
                if consumer.done() and consumer.exception() is not None:
                    # Without a consumer the process would idle forever: exit, to be restarted.
                    raise RuntimeError("a consumer stopped") from consumer.exception()
        finally:
            stopped.cancel()
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            if self._running:
                log.info("waiting for %d running job(s)", len(self._running))
                _, late = await asyncio.wait(self._running, timeout=self.settings.sidecar_shutdown_grace_s)
                for job in late:
                    job.cancel()  # the job hands its message back
                await asyncio.gather(*late, return_exceptions=True)
            await self.broker.close()
            await self.database.close()
            await self.coalescer.close()
            await self.worker.aclose()

    async def _wait_for_worker(self, stop: asyncio.Event) -> None:
        """Take no job before the worker is warm: each failed attempt would cost a delivery."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.worker_ready_timeout_s
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                if (await self.worker.get("/health")).status_code == 200:
                    return
            if loop.time() > deadline:
                raise RuntimeError(f"worker {self.settings.worker_url} not ready after "
                                   f"{self.settings.worker_ready_timeout_s}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _consume(self) -> None:
        async for delivery in self.broker.consume(self.settings.sidecar_prefetch):
            job = asyncio.create_task(self._handle(delivery))
            self._running.add(job)
            job.add_done_callback(self._running.discard)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            async with self._slots:
                await self._process(delivery)
        except asyncio.CancelledError:
            await asyncio.shield(delivery.release())
            raise
        except Exception:
            # The store or the broker failed: leave the message to be delivered again.
            log.exception("handling a delivery failed")
            with contextlib.suppress(Exception):
                await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
                await delivery.retry()

    async def _process(self, delivery: Delivery) -> None:
        try:
            spec = JobSpec.model_validate_json(delivery.body)
        except ValidationError:
            log.error("dropping a message that is not a job: %r", delivery.body[:200])
            await delivery.ack()
            return
        record = await self.records.get(spec.job_id)
        if record is None:
            log.error("dropping job %s: it has no record", spec.job_id)
            await delivery.ack()
            return
        status = record.status
        if status.finished:
            await delivery.ack()
            return
        if status.cancel_requested:
            await self._finish(delivery, status, "cancelled")
            return
        task = TASKS.get(spec.task)
        if task is None:
            await self._finish(delivery, status, "failed", ErrorInfo(code="unknown_task", message=spec.task))
            return

        running = await self.records.save(status, status="running", attempts=delivery.attempt,
                                          started_at=status.started_at or utc_now(), error=None)
        if running is None:  # cancelled while queued, a moment ago
            await delivery.ack()
            return
        self.metrics.count("running")
        run = _Progress(self.records, running)
        context = TaskContext(spec.job_id, task.options.model_validate(record.spec.options), self.settings,
                              self.store, self.worker, run.checkpoint, self.coalescer.predict)
        try:
            rows = await self._rows(record, task.row)
            output = await task.run(context, rows)
        except JobCancelled:
            await self._finish(delivery, run.status, "cancelled")
        except TaskFailed as exc:
            await self._finish(delivery, run.status, "failed", ErrorInfo(code=exc.code, message=exc.message))
        except Exception as exc:
            log.warning("job %s attempt %d failed: %r", spec.job_id, delivery.attempt, exc, exc_info=True)
            error = ErrorInfo(code="attempt_failed", message=f"attempt {delivery.attempt}: {exc!r}")
            await self.records.save(run.status, status="queued", error=error)
            self.metrics.count("retried")
            await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
            await delivery.retry()
        else:
            await self.records.succeed(run.status, record.spec, output)
            await delivery.ack()
            self.metrics.count("succeeded")
            log.debug("job %s succeeded", spec.job_id)  # one line per job would cost more than the job

    async def _rows(self, record: JobRecord, row_model: type[BaseModel]) -> list[Any]:
        data = record.input_data
        if data is None and record.spec.input_key is not None:
            data = await self.store.get(record.spec.input_key)
            if data is None:
                raise TaskFailed("input_missing", f"no input object at {record.spec.input_key}")
        if data is None:
            return []
        try:
            return validate(list[row_model], orjson.loads(data), "inputs")  # type: ignore[valid-type]
        except orjson.JSONDecodeError as exc:
            raise TaskFailed("invalid_input", f"the input is not JSON: {exc}") from None
        except InvalidJob as exc:
            raise TaskFailed("invalid_input", exc.message) from None

    async def _finish(self, delivery: Delivery, status: JobStatus, state: str, error: ErrorInfo | None = None) -> None:
        await self.records.save(status, status=state, finished_at=utc_now(), error=error)
        await delivery.ack()
        self.metrics.count(state)
        log.info("job %s %s", status.job_id, state)

    async def _consume_dead_letters(self) -> None:
        async for delivery in self.broker.consume(1, dead=True):
            try:
                spec = JobSpec.model_validate_json(delivery.body)
            except ValidationError:
                await delivery.ack()
                continue
            status = await self.records.status(spec.job_id)
            if status is not None and not status.finished:
                last = status.error.message if status.error else "its sidecar stopped each time"
                message = f"gave up after {self.settings.job_max_deliveries} deliveries; last error: {last}"
                await self.records.fail(status, "delivery_limit", message)
                self.metrics.count("failed")
                log.warning("job %s dead-lettered", spec.job_id)
            await delivery.ack()


class _Progress:
    """A running job's status as its checkpoints move it; written at most every PROGRESS_INTERVAL_S."""

    def __init__(self, records: JobRecords, status: JobStatus) -> None:
        self.records = records
        self.status = status
        self._written = time.monotonic()

    async def checkpoint(self, done: int, total: int) -> None:
        if done < total and await self.records.cancel_requested(self.status.job_id):
            raise JobCancelled(self.status.job_id)
        progress = {"done": done, "total": total}
        if time.monotonic() - self._written >= PROGRESS_INTERVAL_S:
            self._written = time.monotonic()
            self.status = await self.records.save(self.status, progress=progress) or self.status
        else:
            self.status = self.status.model_copy(update={"progress": Progress(**progress)})


def main() -> None:
    settings = JobsSettings()
    logging.basicConfig(level="INFO", format="%(asctime)s sidecar %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    registry = CollectorRegistry()
    if settings.sidecar_metrics_port:
        start_http_server(settings.sidecar_metrics_port, addr=settings.sidecar_metrics_host, registry=registry)
    sidecar = Sidecar(settings, ArtifactStore.from_settings(settings), create_broker(settings),
                      create_database(settings), JobsMetrics(registry))

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await sidecar.run(stop)

    uvloop.run(serve())


if __name__ == "__main__":
    main()
