"""The webhook dispatcher: delivers the outbox's rows (jobs.outbox) to their callback URLs.

Each try POSTs ``{"type": "job.<state>", "timestamp", "data": <the job's status as the change left it>}``, signed
(jobs.webhook_signing), to the address the URL was checked to resolve to (jobs.callback_urls), without following
redirects, within WEBHOOK_TIMEOUT_S. A 2xx answer delivers it. Anything else is tried again after an exponential
backoff with jitter, until WEBHOOK_RETRY_S after the state change; then the row is marked failed. A URL that now
resolves to an address webhooks may not go to fails at once.

At most WEBHOOK_CONCURRENCY requests are in flight per process, and WEBHOOK_HOST_CONCURRENCY per receiving host:
a slow receiver holds its own share only. Every process that runs the dispatcher (each sidecar) claims rows with a
lease, so they share the work and a dead one's rows are taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx
import orjson

from jobs.callback_urls import CallbackRefused, resolve
from jobs.dependencies import cancelling
from jobs.errors import JobsUnavailable
from jobs.metrics import JobsMetrics
from jobs.outbox import Outbox, Webhook
from jobs.records import JobRecords, moment
from jobs.schema import ErrorInfo
from jobs.settings import JobsSettings
from jobs.webhook_signing import secret_key, signed_headers

log = logging.getLogger("jobs.webhooks")
#: Fields of a job's status that a state change sets; the webhook's body has them as the change left them.
_SNAPSHOT = ("status", "attempts", "started_at", "finished_at", "updated_at", "result_model_name",
             "result_model_version")


def micros_now() -> int:
    return time.time_ns() // 1000


class WebhookDispatcher:
    def __init__(self, settings: JobsSettings, records: JobRecords, outbox: Outbox, metrics: JobsMetrics,
                 owner: str) -> None:
        self.settings = settings
        self.records = records
        self.outbox = outbox
        self.metrics = metrics
        self.owner = owner
        self._key = None if settings.webhook_secret is None else secret_key(settings.webhook_secret)
        self._client = httpx.AsyncClient(
            follow_redirects=False, timeout=settings.webhook_timeout_s, trust_env=False,
            limits=httpx.Limits(max_connections=settings.webhook_concurrency),
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._per_host: Counter[str] = Counter()
        self._slot_free = asyncio.Event()

    async def run(self) -> None:
        """Claim and deliver due webhooks until cancelled; a database outage only pauses it."""
        try:
            while True:
                free = self.settings.webhook_concurrency - len(self._in_flight)
                claimed = 0
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except JobsUnavailable as exc:
                        log.warning("webhooks: %s; trying again", exc.message)
                    except Exception:  # a bug here must not stop delivering for good
                        if cancelling():
                            raise  # a cancel a driver turned into an error: stop, as asked
                        log.exception("webhooks: claiming failed; trying again")
                self._slot_free.clear()
                if claimed < free:  # nothing more is due now: look again in a while
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slot_free.wait(), self.settings.webhook_poll_s)
                elif claimed == free:  # as many as it could take: as soon as one ends
                    await self._slot_free.wait()
        finally:
            for task in self._in_flight:
                task.cancel()  # their leases run out and another process delivers them
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self._client.aclose()

    async def _claim(self, free: int) -> int:
        now = micros_now()
        lease_until = now + int(self.settings.webhook_lease_s * 1_000_000)
        webhooks = await self.outbox.claim(self.owner, now, lease_until, free)
        for webhook in webhooks:
            host = urlsplit(webhook.row["url"]).hostname or ""
            if self._per_host[host] >= self.settings.webhook_host_concurrency:
                await self.outbox.put_back(webhook, self.owner, now + int(self.settings.webhook_poll_s * 1_000_000))
                continue
            self._per_host[host] += 1
            task = asyncio.create_task(self._deliver(webhook))
            self._in_flight.add(task)
            task.add_done_callback(lambda done, host=host: self._ended(done, host))
        return len(webhooks)

    def _ended(self, task: asyncio.Task[None], host: str) -> None:
        self._in_flight.discard(task)
        self._per_host[host] -= 1
        if self._per_host[host] <= 0:
            del self._per_host[host]
        self._slot_free.set()

    async def _deliver(self, webhook: Webhook) -> None:
        try:
            await self._try(webhook)
        except JobsUnavailable as exc:
            log.warning("webhook %s: %s; its lease runs out and it is tried again", webhook.webhook_id, exc.message)
        except Exception:
            log.exception("webhook %s failed; its lease runs out and it is tried again", webhook.webhook_id)

    async def _try(self, webhook: Webhook) -> None:
        body = await self._body(webhook)
        if body is None:
            await self._settle(webhook, "failed", None, "the job was deleted before its webhook was delivered")
            return
        if self._key is None:
            await self._again(webhook, None, "WEBHOOK_SECRET is not set: webhooks cannot be signed")
            return
        try:
            destination = await resolve(webhook.row["url"], self.settings.webhook_allow_private_networks,
                                        self.settings.webhook_resolve_timeout_s)
        except CallbackRefused as exc:
            if "does not resolve" in str(exc):
                await self._again(webhook, None, str(exc))
            else:
                await self._settle(webhook, "failed", None, f"refused: {exc}")
            return
        parts = urlsplit(webhook.row["url"])
        headers = signed_headers(self._key, webhook.webhook_id, int(time.time()), body)
        headers["host"] = parts.netloc.rpartition("@")[2]
        headers["user-agent"] = "jax-inference-gateway-webhooks"
        extensions = {"sni_hostname": destination.host} if parts.scheme == "https" else {}
        try:
            status = await self._post(destination.request_url(), body, headers, extensions)
        except TimeoutError:
            await self._again(webhook, None, f"no answer in WEBHOOK_TIMEOUT_S ({self.settings.webhook_timeout_s:g} s)")
            return
        except httpx.HTTPError as exc:
            await self._again(webhook, None, f"{type(exc).__name__}: {exc}"[:500])
            return
        if 200 <= status < 300:
            await self._settle(webhook, "delivered", status, None, delivered_at=micros_now())
        else:
            await self._again(webhook, status, f"answered {status}")

    async def _post(self, url: str, body: bytes, headers: dict[str, str], extensions: dict[str, str]) -> int:
        """The receiver's status code, within WEBHOOK_TIMEOUT_S overall (httpx's own timeout is per read, so a
        receiver trickling bytes would outlast it). Its body is never read: a receiver answering gigabytes costs
        nothing, and closing the stream drops the connection rather than drain it."""
        async with asyncio.timeout(self.settings.webhook_timeout_s):
            async with self._client.stream("POST", url, content=body, headers=headers,
                                           extensions=extensions) as response:
                return response.status_code

    async def _body(self, webhook: Webhook) -> bytes | None:
        """The job's status with the fields the change set as it set them; None when the job is gone."""
        status = await self.records.status(webhook.row["job_id"])
        if status is None:
            return None
        row = webhook.row
        error = None if row["error_code"] is None else ErrorInfo(code=row["error_code"], message=row["error_message"])
        moments = {name: row[name] for name in _SNAPSHOT}
        data = status.model_copy(update={
            **{name: value for name, value in moments.items() if not name.endswith("_at")},
            **{name: moment(value) for name, value in moments.items() if name.endswith("_at")},
            "error": error, "callback": None,
            "progress": status.progress.model_copy(update={"done": row["progress_done"],
                                                           "total": row["progress_total"]}),
        })
        payload = {"type": f"job.{row['status']}", "timestamp": data.updated_at.isoformat(),
                   "data": data.model_dump(mode="json", exclude={"callback"})}
        return orjson.dumps(payload)

    async def _again(self, webhook: Webhook, last_status: int | None, error: str) -> None:
        """Try again after a backoff (WEBHOOK_MIN_BACKOFF_S doubling, capped, with jitter), or give up once that
        would pass WEBHOOK_RETRY_S after the state change."""
        settings = self.settings
        backoff = min(settings.webhook_max_backoff_s, settings.webhook_min_backoff_s * 2 ** webhook.row["deliveries"])
        next_at = micros_now() + int(backoff * random.uniform(0.5, 1.0) * 1_000_000)
        if next_at > webhook.row["updated_at"] + int(settings.webhook_retry_s * 1_000_000):
            await self._settle(webhook, "failed", last_status, f"gave up after WEBHOOK_RETRY_S; last: {error}")
            return
        self.metrics.count_webhook("retried")
        await self.outbox.settle(webhook, self.owner, state="pending", last_status=last_status, last_error=error,
                                 next_at=next_at, delivered_at=None)

    async def _settle(self, webhook: Webhook, state: str, last_status: int | None, error: str | None,
                      delivered_at: int | None = None) -> None:
        if state == "failed":
            log.warning("webhook %s to %s failed: %s", webhook.webhook_id, webhook.row["url"], error)
        self.metrics.count_webhook(state)
        await self.outbox.settle(webhook, self.owner, state=state, last_status=last_status, last_error=error,
                                 next_at=micros_now(), delivered_at=delivered_at)
