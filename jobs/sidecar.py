"""``python -m jobs.sidecar``: runs jobs from the broker on the worker next to it.

For each delivery: read the job's record; skip it if the job already finished
(a redelivery after a crash) or was cancelled; run its task (its record says
running once it has run half a second, so a short job costs one status write,
not two) through the worker over loopback, in chunks, so jobs share the worker's
batching (with SIDECAR_SPREAD_URL, a job of more than one chunk sends its
chunks to that gateway instead, which spreads them over every worker:
jobs.spread); write the result and the succeeded state (one database write); and
only then ack. A crash anywhere before the ack
means the message is delivered again, and a finished job is never run twice:
at-least-once delivery, exactly one visible result.

A job's message can be duplicated (a publish whose confirm was lost in a broker
outage is sent again; a redelivery after a lost ack), and one sidecar may hold
both copies at once, while the record still says running. A sidecar keeps the
ids of the jobs it is running: a second delivery of one of them waits for that
run to end, then is settled as any delivery (the job finished: ack). Two
sidecars holding the two copies can still both run the job; its result is
written once (a finished record is never written again).

A failing attempt is retried (after JOB_RETRY_DELAY_S times its number) until
the broker dead-letters the message; the sidecar also reads the dead-letter
queue and marks those jobs failed with their last error.

Jobs are bound to a model (jobs.routing). Before it consumes, the sidecar
learns its worker's model from the worker's /health and consumes only that
model's queue. A job whose record names another model, or an input shape the
worker does not take, is refused without running: the reason is recorded and
the delivery counted as a failed attempt, so past JOB_MAX_DELIVERIES it is
dead-lettered and failed with that reason; it is never marked succeeded. A job
accepted for another version of the same model runs. The worker's /health is
read again every SIDECAR_MODEL_CHECK_S, and every answer of the worker names its
model (common.model_headers): once the worker serves another model (another
name, or another input shape) the sidecar hands back every job it holds,
untouched, and binds to the new model. Another version of the same model (a hot
swap, a canary answering some requests) is followed, not a change: running jobs
go on, and each result records every version that computed some of its rows
(jobs.attempt.ComputingVersions).

Outages of the database, the broker or the store are not the job's failures
(jobs.dependencies): a call that meets one is tried again, with the delivery
held, for SIDECAR_DATABASE_RETRY_S or SIDECAR_STORE_RETRY_S; past that the job is
handed back with the reason on its record, uncounted where the broker can, and a
result already computed waits in the spool (jobs.spool) for its next delivery.
No dependency's error ends a consumer or the sidecar.

A job with a deadline (``expires_at``) is checked before it starts: past it,
the job ends ``expired`` without running; before it, the record says running
at once (one more write, for these jobs only), so the deployment's expiry of
queued jobs (jobs.housekeeping) never expires one that started. Each sidecar
also runs the webhook dispatcher (jobs.webhooks) and the housekeeping loop, so
every deployment that runs jobs delivers webhooks, expires and cleans up.

SIGTERM or SIGINT: stop taking jobs, give running ones SIDECAR_SHUTDOWN_GRACE_S
to finish, hand back the rest to the broker, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx
import orjson
import uvloop
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from common.gc_tuning import frozen_startup_heap
from common.model_headers import answering_model
from jobs.attempt import ComputingVersions, ProgressWriter, SettledOnce
from jobs.broker import Broker, Delivery, create_broker
from jobs.coalesce import Coalescer
from jobs.database import Database, create_database
from jobs.dependencies import MAX_BACKOFF_S, Dependencies, PatientDatabase, patiently
from jobs.errors import InvalidJob, JobCancelled, JobsUnavailable, TaskFailed
from jobs.housekeeping import EXPIRED_MESSAGE, Housekeeping, process_id
from jobs.metrics import JobsMetrics
from jobs.outbox import Outbox
from jobs.records import JobRecord, JobRecords
from jobs.registry import Registry
from jobs.routing import ModelIdentity
from jobs.schema import ErrorInfo, JobSpec, JobStatus, utc_now, validate
from jobs.settings import JobsSettings
from jobs.spool import ResultSpool
from jobs.spread import Spreader
from jobs.store import ArtifactStore
from jobs.tasks import TASKS, TaskContext, TaskType, import_task_modules
from jobs.webhooks import WebhookDispatcher

log = logging.getLogger("jobs.sidecar")


#: Longest wait for the webhook and housekeeping loops to end once cancelled.
BACKGROUND_STOP_S = 5.0

class ModelChanged(Exception):
    """The worker answered as another model (another name) than the one this sidecar is bound to."""


class Sidecar:
    def __init__(self, settings: JobsSettings, store: ArtifactStore, broker: Broker, database: Database,
                 metrics: JobsMetrics) -> None:
        self.settings = settings
        #: Which of the database, broker and store are down (the sidecar's health, on its /metrics).
        self.dependencies = Dependencies(metrics.registry)
        self.database = PatientDatabase(database, self.dependencies, settings.sidecar_database_retry_s)
        self.records = JobRecords(self.database, store, settings)
        store.outages = self.dependencies
        self.store = store
        #: Where a train job registers the version it makes (the database and store above, their outages waited).
        self.registry = Registry(self.database, store, claim_stale_s=settings.registry_claim_stale_s)
        #: Results computed while the store was down, written on the job's next delivery.
        self.spool = ResultSpool.from_settings(settings)
        self.broker = broker
        broker.watch(self.dependencies)
        self.metrics = metrics
        key = {"Authorization": f"Bearer {settings.worker_api_key}"} if settings.worker_api_key else {}
        self.worker = httpx.AsyncClient(
            base_url=settings.worker_url, timeout=settings.worker_timeout_s, headers=key,
            limits=httpx.Limits(max_connections=settings.sidecar_worker_calls + 4),
            event_hooks={"response": [self._check_answering_model]},
        )
        #: The model of the worker whose queue this sidecar consumes, at the version the worker last named;
        #: None before it knows.
        self.model: ModelIdentity | None = None
        self._model_changed = asyncio.Event()
        #: Why the jobs being cancelled are handed back (the worker's new model), while they are.
        self._handing_back: str | None = None
        self.coalescer = Coalescer(settings.worker_url, settings.worker_api_key, settings.worker_timeout_s,
                                   self._check_answer, settings.job_chunk_rows, settings.sidecar_worker_calls)
        #: Large jobs' chunks over every worker, through a gateway; None: all go to the own worker.
        self.spreader = Spreader(settings, self.coalescer.predict) if settings.sidecar_spread_url else None
        self._slots = asyncio.Semaphore(settings.sidecar_concurrency)
        self._running: set[asyncio.Task[None]] = set()
        #: Job id -> set when this sidecar's run of that job ends: a duplicate delivery waits for it.
        self._runs: dict[str, asyncio.Event] = {}
        owner = process_id()
        self.webhooks = WebhookDispatcher(settings, self.records, Outbox(self.database), metrics, owner)
        self.housekeeping = Housekeeping(settings, self.database, store, metrics, owner)
        import_task_modules(settings.job_task_modules)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down as the module docstring says."""
        sweeping = asyncio.create_task(self._sweep_spool(), name="spool-sweep")
        background = [asyncio.create_task(self.webhooks.run(), name="webhooks"),
                      asyncio.create_task(self.housekeeping.run(), name="housekeeping")]
        try:
            while not stop.is_set():
                model = await self._wait_for_worker(stop)
                if model is None:
                    break
                await self._serve(model, stop)
        finally:
            sweeping.cancel()
            for task in background:
                task.cancel()
            # A loop whose cancel a database driver turned into an error must not hold the shutdown for ever.
            _, stuck = await asyncio.wait(background, timeout=BACKGROUND_STOP_S)
            for task in stuck:
                log.warning("the %s loop did not stop when cancelled; shutting down without it", task.get_name())
            if self._running:
                log.info("waiting for %d running job(s)", len(self._running))
                _, late = await asyncio.wait(self._running, timeout=self.settings.sidecar_shutdown_grace_s)
                for job in late:
                    job.cancel()  # the job hands its message back
                await asyncio.gather(*late, return_exceptions=True)
            await self.broker.close()
            await self.database.close()
            await self.coalescer.close()
            if self.spreader is not None:
                await self.spreader.close()
            await self.worker.aclose()

    async def _sweep_spool(self) -> None:
        """Drop the results kept for jobs that finished elsewhere meanwhile: a spool is one machine's, and a job's
        next delivery may have gone to another."""
        try:
            if dropped := await self.spool.sweep(self.records.finished_among):
                log.info("dropped %d kept result(s) of jobs that finished meanwhile", dropped)
        except (JobsUnavailable, OSError) as exc:
            log.warning("sweeping the result spool failed: %s", exc)

    async def _serve(self, model: ModelIdentity, stop: asyncio.Event) -> None:
        """Consume ``model``'s queues until ``stop``, or until the worker serves another model."""
        self.model = model
        self._model_changed.clear()
        stopped = asyncio.create_task(stop.wait())
        # A sidecar started in a broker outage waits for the broker: exiting would only be a crash loop.
        starting = asyncio.create_task(patiently("broker", math.inf, self.broker.start, self.dependencies))
        tasks = [stopped, starting]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                return
            starting.result()
            watcher = asyncio.create_task(self._watch_model(model), name="model-watch")
            tasks += [
                watcher,
                asyncio.create_task(self._keep_consuming(self._consume, model), name="jobs"),
                asyncio.create_task(self._keep_consuming(self._consume_dead_letters, model), name="dead-letters"),
            ]
            log.info("consuming jobs of model %s for %s", model.describe(), self.settings.worker_url)
            await asyncio.wait([stopped, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if stop.is_set() or not watcher.done() or watcher.cancelled():
            return
        # The worker serves another model now: what ran on it since is not this model's answer.
        self._handing_back = watcher.result()
        log.warning("%s: handing back %d job(s) and rebinding", self._handing_back, len(self._running))
        for job in list(self._running):
            job.cancel()  # each hands its message back, untouched
        await asyncio.gather(*self._running, return_exceptions=True)
        self.model = self._handing_back = None

    async def _identify(self) -> ModelIdentity | None:
        """The worker's model from its /health (its /metadata if /health does not say); None while not ready."""
        response = await self.worker.get("/health")
        if response.status_code != 200:
            return None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return ModelIdentity.from_health(response.json())
        try:
            return ModelIdentity.from_metadata((await self.worker.get("/metadata")).raise_for_status().json())
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RuntimeError(f"worker {self.settings.worker_url} names no model (name, version, input shape) "
                               "in its /health nor its /metadata") from exc

    async def _wait_for_worker(self, stop: asyncio.Event) -> ModelIdentity | None:
        """Take no job before the worker is warm (each failed attempt would cost a delivery); its model, or None
        once ``stop`` is set."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.worker_ready_timeout_s
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                if (model := await self._identify()) is not None:
                    return model
            if loop.time() > deadline:
                raise RuntimeError(f"worker {self.settings.worker_url} not ready after "
                                   f"{self.settings.worker_ready_timeout_s}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return None

    async def _watch_model(self, model: ModelIdentity) -> str:
        """Once the worker serves another model than ``model`` (its /health says so, or an answer did): what.
        Another version of it, taking the same input shape, is followed (``self.model``), not a change."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._model_changed.wait(), self.settings.sidecar_model_check_s)
            if self._model_changed.is_set():
                return f"the worker's answers are no longer those of model {model.name!r}"
            # A worker restarting: its jobs' attempts fail as before. ModelChanged: seen at the top of the loop.
            with contextlib.suppress(httpx.HTTPError, ModelChanged):
                served = await self._identify()
                if served is None:
                    continue
                if (served.name, served.input_shape) != (model.name, model.input_shape):
                    return f"the worker serves model {served.describe()} now, not {model.describe()}"
                self.model = served

    async def _check_answering_model(self, response: httpx.Response) -> None:
        """Every answer of the worker but /health names the model that computed it: it must be this sidecar's."""
        if response.request.url.path != "/health":
            self._check_answer(response.headers)

    def _check_answer(self, headers: Mapping[str, str]) -> str | None:
        """The version that computed an answer (the worker's last known one when the answer names none);
        ModelChanged when its headers name another model than this sidecar's. Another version of the model is
        the worker's version from now on."""
        answering = answering_model(headers)
        if self.model is None:
            return None if answering is None else answering[1]
        if answering is None:
            return self.model.version
        name, version = answering
        if name != self.model.name:
            self._model_changed.set()
            raise ModelChanged(f"the worker answered as model {name!r} version {version!r}, "
                               f"not {self.model.describe()}")
        if version != self.model.version:
            self.model = replace(self.model, version=version)
        return version

    def _refusal(self, status: JobStatus, model: ModelIdentity) -> str | None:
        """Why a job cannot run on ``model``, or None. Another version of the same model may run it."""
        if status.model_name != model.name:
            return (f"the job was accepted for model {status.model_name!r} but reached a sidecar whose worker "
                    f"serves {model.describe()}; refused without running it")
        if status.input_shape is not None and tuple(status.input_shape) != model.input_shape:
            return (f"the job's rows were checked against input shape {status.input_shape}, but the worker of "
                    f"{model.describe()} takes another; refused without running it")
        return None

    async def _keep_consuming(self, consume: Callable[[ModelIdentity], Awaitable[None]],
                              model: ModelIdentity) -> None:
        """Run ``consume`` again whenever the broker ends it (a lost channel or connection): a sidecar never exits
        for a broker error, it waits for the broker and goes on."""
        while True:
            try:
                await consume(model)
            except Exception as exc:
                log.warning("a consumer stopped (%r); starting it again in %.1fs", exc, MAX_BACKOFF_S)
            await asyncio.sleep(MAX_BACKOFF_S)

    async def _consume(self, model: ModelIdentity) -> None:
        async for delivery in self.broker.consume(model.name, self.settings.sidecar_prefetch):
            job = asyncio.create_task(self._handle(SettledOnce(delivery), model))
            self._running.add(job)
            job.add_done_callback(self._running.discard)

    async def _handle(self, delivery: Delivery, model: ModelIdentity) -> None:
        try:
            async with self._slots:
                await self._process(delivery, model)
        except asyncio.CancelledError:
            await asyncio.shield(delivery.release())
            raise
        except JobsUnavailable as exc:
            # A dependency stayed down past its window, or the broker went away before the message was settled:
            # not the job's failure, so it is handed back, uncounted where the broker can (the embedded one;
            # RabbitMQ 3.x counts every return; a broker gone delivers it again by itself).
            log.warning("job handed back: %s", exc.message)
            with contextlib.suppress(Exception):
                await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
                await (delivery.release() if exc.transient else delivery.retry())
        except Exception:
            # A bug: logged with its traceback, and the message delivered again.
            log.exception("handling a delivery failed")
            with contextlib.suppress(Exception):
                await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
                await delivery.retry()

    async def _process(self, delivery: Delivery, model: ModelIdentity) -> None:
        try:
            spec = JobSpec.model_validate_json(delivery.body)
        except ValidationError:
            log.error("dropping a message that is not a job: %r", delivery.body[:200])
            await delivery.ack()
            return
        while (other := self._runs.get(spec.job_id)) is not None:  # a duplicate of a job running here
            await other.wait()
        self._runs[spec.job_id] = ended = asyncio.Event()
        try:
            await self._process_job(delivery, spec, model)
        finally:
            del self._runs[spec.job_id]
            ended.set()

    async def _process_job(self, delivery: Delivery, spec: JobSpec, model: ModelIdentity) -> None:
        record = await self.records.get(spec.job_id)
        if record is None:
            # Not ours to drop: most likely another deployment's job, on a broker shared with separate databases.
            log.error("job %s has no record in this sidecar's database: handing it back", spec.job_id)
            await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
            await delivery.retry()
            return
        status = record.status
        if (status.finished or status.cancel_requested) and self.spool.holds(spec.job_id):
            await self.spool.drop(spec.job_id)  # a result kept for it is wanted no more
        if status.finished:
            await delivery.ack()
            return
        if status.cancel_requested:
            await self._finish(delivery, status, "cancelled")
            return
        # The worker's version now (self.model follows it; None only while this consumer is being stopped).
        model = self.model or model
        if (refusal := self._refusal(status, model)) is not None:
            log.warning("job %s attempt %d: %s", spec.job_id, delivery.attempt, refusal)
            await self.records.save(status, status="queued", attempts=delivery.attempt,
                                    error=ErrorInfo(code="model_mismatch", message=refusal))
            self.metrics.count("refused")
            await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
            await delivery.retry()
            return
        task = TASKS.get(spec.task)
        if task is None:
            await self._finish(delivery, status, "failed", ErrorInfo(code="unknown_task", message=spec.task))
            return
        if self.spool.holds(spec.job_id) and (kept := await self.spool.take(spec.job_id)) is not None:
            # An earlier attempt computed the result but could not write it: written now, not computed again.
            log.info("job %s: writing the result an earlier attempt kept", spec.job_id)
            again = status.model_copy(update={"attempts": delivery.attempt,
                                              "started_at": status.started_at or utc_now()})
            await self._succeed(delivery, again, record.spec, orjson.Fragment(kept.data),
                                (kept.model_name, kept.model_version), kept=True)
            return

        # Running from here, in memory: the record says so once the job has run PROGRESS_INTERVAL_S (ProgressWriter).
        running = status.model_copy(update={"status": "running", "attempts": delivery.attempt,
                                            "started_at": status.started_at or utc_now(), "error": None})
        if status.expires_at is not None and status.status == "queued":
            if status.expires_at <= utc_now():
                await self._finish(delivery, status, "expired", ErrorInfo(code="expired", message=EXPIRED_MESSAGE))
                return
            started = await self.records.save(running)  # now, or the expiry of queued jobs could take it
            if started is None:  # expired (or cancelled) meanwhile
                await delivery.ack()
                return
            running = started
        self.metrics.count("running")
        run = ProgressWriter(self.records, running)
        last = running  # what the attempt's last write starts from, should stopping the progress writes be cut off
        versions = ComputingVersions(model.version)
        spread = None if self.spreader is None else versions.collecting(
            functools.partial(self.spreader.predict, model_name=model.name))
        context = TaskContext(spec.job_id, task.options.model_validate(record.spec.options), self.settings,
                              self.store, self.worker, run.checkpoint, versions.collecting(self.coalescer.predict),
                              spread, registry=self.registry, promote=record.spec.promote)
        try:
            try:
                rows = await self._rows(record, task)
                output = await task.run(context, rows)
            finally:
                last = await run.stop()  # no progress write may land after the write that ends this attempt
        except JobCancelled:
            await self._finish(delivery, last, "cancelled")
        except ModelChanged as exc:
            log.warning("job %s handed back: %s", spec.job_id, exc)
            error = ErrorInfo(code="model_changed", message=f"attempt {delivery.attempt}: {exc}; handed back")
            await self.records.save(last, status="queued", error=error)
            await delivery.release()
        except asyncio.CancelledError:
            if self._handing_back is not None:
                error = ErrorInfo(code="model_changed",
                                  message=f"attempt {delivery.attempt}: {self._handing_back}; handed back")
                await self.records.save(last, status="queued", error=error)
            raise
        except TaskFailed as exc:
            await self._finish(delivery, last, "failed", ErrorInfo(code=exc.code, message=exc.message))
        except JobsUnavailable as exc:
            await self._hand_back(delivery, last, exc)
        except Exception as exc:
            log.warning("job %s attempt %d failed: %r", spec.job_id, delivery.attempt, exc, exc_info=True)
            error = ErrorInfo(code="attempt_failed", message=f"attempt {delivery.attempt}: {exc!r}")
            await self.records.save(last, status="queued", error=error)
            self.metrics.count("retried")
            await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
            await delivery.retry()
        else:
            await self._succeed(delivery, last, record.spec, output, (model.name, versions.describe()))

    async def _succeed(self, delivery: Delivery, status: JobStatus, spec: JobSpec, output: Any,
                       computed_by: tuple[str | None, str | None], *, kept: bool = False) -> None:
        """Write the result and the succeeded state, then ack; ``kept``: ``output`` comes from the spool.

        A result the store (or the database) would not take within its window is kept in the spool
        (SIDECAR_SPOOL_MAX_BYTES) and the job handed back: its next delivery on this machine writes it.
        """
        try:
            written = await self.records.succeed(status, spec, output, computed_by)
        except JobsUnavailable as exc:
            if exc.transient and not kept:
                kept = await self._keep(spec.job_id, output, computed_by)
            result = "its result is kept and written on its next delivery" if kept else (
                "its result is computed again")
            await self._hand_back(delivery, status, exc, f"; {result}")
            return
        if kept:
            await self.spool.drop(spec.job_id)
        # Not written if the job finished meanwhile (cancelled while this ran): that state stands.
        if written is not None:
            self.metrics.count("succeeded")  # counted as recorded: a client may see the record before the ack
        await delivery.ack()
        log.debug("job %s succeeded", spec.job_id)  # one line per job would cost more than the job

    async def _keep(self, job_id: str, output: Any, computed_by: tuple[str | None, str | None]) -> bool:
        """Keep a result in the spool; False when it is full or cannot be written (it is computed again)."""
        try:
            return await self.spool.keep(job_id, orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY), *computed_by)
        except OSError as exc:
            log.warning("keeping job %s's result in %s failed: %s", job_id, self.spool.folder, exc)
            return False

    async def _hand_back(self, delivery: Delivery, status: JobStatus, error: JobsUnavailable, note: str = "") -> None:
        """A dependency failed the attempt: say so on the job's record (when the database is up) and hand it back.

        An outage past its window is not the job's failure: uncounted where the broker can (the embedded one;
        RabbitMQ 3.x counts every return). A refusal that trying again would not change (DependencyRefused: the
        store refusing the credentials) spends the attempt, so past JOB_MAX_DELIVERIES the job fails with it.
        """
        reason = f"{error.message}{note}"
        log.warning("job %s attempt %d handed back: %s", status.job_id, delivery.attempt, reason)
        if self.dependencies.is_up("database"):
            code = "dependency_unavailable" if error.transient else "dependency_refused"
            message = f"attempt {delivery.attempt}: {reason}; handed back"
            await self.records.save(status, status="queued", error=ErrorInfo(code=code, message=message))
        await asyncio.sleep(self.settings.job_retry_delay_s * delivery.attempt)
        await (delivery.release() if error.transient else delivery.retry())

    async def _rows(self, record: JobRecord, task: TaskType) -> list[Any]:
        data = record.input_data
        if data is None and record.spec.input_key is not None:
            data = await self.store.get(record.spec.input_key)
            if data is None:
                raise TaskFailed("input_missing", f"no input object at {record.spec.input_key}")
        if data is None:
            return []
        try:
            decoded = orjson.loads(data)
            if task.plain is not None and (rows := task.plain(decoded)) is not None:
                return rows
            return validate(list[task.row], decoded, "inputs")  # type: ignore[name-defined]
        except orjson.JSONDecodeError as exc:
            raise TaskFailed("invalid_input", f"the input is not JSON: {exc}") from None
        except InvalidJob as exc:
            raise TaskFailed("invalid_input", exc.message) from None

    async def _finish(self, delivery: Delivery, status: JobStatus, state: str, error: ErrorInfo | None = None) -> None:
        await self.records.save(status, status=state, finished_at=utc_now(), error=error)
        self.metrics.count(state)
        await delivery.ack()
        log.info("job %s %s", status.job_id, state)

    async def _consume_dead_letters(self, model: ModelIdentity) -> None:
        async for delivery in self.broker.consume(model.name, 1, dead=True):
            try:
                await self._settle_dead_letter(delivery)
            except Exception as exc:
                # The database stayed down past its window (the record waits; so does the dead letter), or the
                # broker went away (it delivers the dead letter again), or a bug (its traceback is logged).
                if isinstance(exc, JobsUnavailable):
                    log.warning("settling a dead-lettered job: %s; it is settled later", exc.message)
                else:
                    log.exception("settling a dead-lettered job failed; it is settled later")
                await asyncio.sleep(MAX_BACKOFF_S)
                with contextlib.suppress(Exception):
                    await delivery.release()

    async def _settle_dead_letter(self, delivery: Delivery) -> None:
        """Mark a dead-lettered job failed with its last error, then ack the dead letter. The dead letter of an
        earlier run of a job retried since is only acked: the new run is not its to end."""
        try:
            spec = JobSpec.model_validate_json(delivery.body)
        except ValidationError:
            await delivery.ack()
            return
        status = await self.records.status(spec.job_id)
        if status is not None and not status.finished and spec.run == len(status.earlier_runs):
            last = status.error.message if status.error else (
                "none recorded: each sidecar that held it stopped or lost the broker before the attempt ended")
            message = f"gave up after {self.settings.job_max_deliveries} deliveries; last error: {last}"
            # A job no sidecar would run keeps saying why; others failed by the limit.
            refused = status.error is not None and status.error.code == "model_mismatch"
            await self.records.fail(status, "model_mismatch" if refused else "delivery_limit", message)
            self.metrics.count("failed")
            log.warning("job %s dead-lettered", spec.job_id)
        await delivery.ack()


def main() -> None:
    settings = JobsSettings()
    logging.basicConfig(level="INFO", format="%(asctime)s sidecar %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    registry = CollectorRegistry()
    if settings.sidecar_metrics_port:
        start_http_server(settings.sidecar_metrics_port, addr=settings.sidecar_metrics_host, registry=registry)
    store = ArtifactStore.from_settings(settings, retry_s=settings.sidecar_store_retry_s)
    sidecar = Sidecar(settings, store, create_broker(settings),
                      create_database(settings), JobsMetrics(registry))

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        frozen_startup_heap()
        await sidecar.run(stop)

    uvloop.run(serve())


if __name__ == "__main__":
    main()
