"""What a known key's request goes through: its rate limit, its models, its quotas, and the count of its usage.

In order: the rate limit (429 ``rate_limited``), a model the key may not use (403 ``model_forbidden``: a path
naming the model, ``/predict`` and ``/batch_predict`` for the default model, a job's ``"model"``), its quotas
(429 ``quota_exceeded``, gateway/quota.py), then the route. The request's body is read here only when it must
be: a key with a quota, a job of a key limited to some models, and jobs when usage is counted (their rows). A job
is read up to the jobs' own body limits; one that cannot be read whole for a key with a quota or some models is
413, since its model and rows could not be checked. Rows charged to a quota are given back when the answer is not
a success (a route that raised included), so a failed request costs nothing.

Usage is counted from the request and the answer: the model that answered (``X-Model-Name``; else a job's
accepted model, or the default model on routes that name none; never a name only the path gave), the rows (one for
``/predict``, else the body's; a ``/predict`` answered from a gathered call gets its share of the call's model
time) and the model time (``X-Inference-Time-Ms`` and ``X-Rows``, headers the workers set); the gateway takes
the two usage headers off the answer.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import error_for
from gateway.keys import KeyPolicy, KeyRing, bootstrap_policies, parse_key_models
from gateway.model_paths import model_of
from gateway.quota import JOB_PATHS, over_quota, quotas_of, rate_limit_headers, request_rows
from gateway.settings import GatewaySettings
from gateway.shared_limits import FileLimits, GuardedLimits, LimitStore, LimitsUnavailable, Quota, RedisLimits
from gateway.usage import UsageCounter, UsageMetrics
from jobs.database import Database
from jobs.settings import JobsSettings
from jobs.usage import KeyStore, UsageStore

_PREDICTION_PATH = re.compile(
    r"/(batch_)?predict|/models/[^/]+/(batch_)?predict/?|/v2/models/[^/]+(/versions/[^/]+)?/infer"
)
RATE_LIMITED_MESSAGE = "this API key is over its rate limit; retry after the Retry-After seconds"
UNAVAILABLE_MESSAGE = "the shared rate limit and quota store is unavailable; retry after the Retry-After seconds"
JOB_UNREAD_MESSAGE = ("this job's body is over {limit} bytes or did not arrive whole, so its model and rows cannot "
                      "be checked against this API key: put the rows in the store and send input_uri")


@dataclass
class _Answer:
    status: int = 0
    model: str | None = None
    rows: int | None = None
    model_ms: float = 0.0


def job_body_limits(settings: JobsSettings) -> dict[str, int]:
    """The largest body each job path takes, so a job is read here as far as its route would read it."""
    return {"/jobs": settings.job_max_inline_bytes, "/jobs/batch": settings.job_batch_max_bytes}


class UsageControl:
    def __init__(self, settings: GatewaySettings, ring: KeyRing, keys: KeyStore, usage_store: UsageStore,
                 usage: UsageCounter | None, limits: GuardedLimits, default_model: Callable[[], str | None],
                 job_body_bytes: Mapping[str, int]) -> None:
        self.settings = settings
        self.ring = ring
        self.keys = keys
        self.usage_store = usage_store
        self.usage = usage
        self.limits = limits
        self.default_model = default_model
        self.job_body_bytes = job_body_bytes
        self._burst_s = settings.rate_limit_burst / settings.rate_limit_per_s if settings.rate_limit_per_s else 2.0
        self._tasks: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def build(cls, settings: GatewaySettings, database: Database, jobs_dir: Path, registry: CollectorRegistry,
              default_model: Callable[[], str | None],
              job_body_bytes: Mapping[str, int] | None = None) -> UsageControl:
        """``job_body_bytes``: the job paths' body limits (``job_body_limits``; by default the environment's)."""
        keys = KeyStore(database)
        ring = KeyRing(bootstrap_policies(settings.api_keys, settings.admin_api_keys,
                                          parse_key_models(settings.api_key_models)),
                       keys, settings.keys_refresh_s)
        store: LimitStore = (RedisLimits(settings.redis_url, settings.redis_timeout_s) if settings.redis_url
                             else FileLimits(jobs_dir / "limits.sqlite3"))
        up = Gauge("gateway_limits_store_up", "1 while the shared rate limit and quota store answers (Redis, or the "
                   "embedded file); 0 in an outage (fail open, then closed).", registry=registry,
                   multiprocess_mode="min")
        up.set(1)
        limits = GuardedLimits(store, settings.limits_fail_open_s, lambda ok: up.set(int(ok)))
        usage_store = UsageStore(database)
        metrics = UsageMetrics(registry, settings.usage_metrics_max_keys, settings.usage_metrics_max_models)
        usage = UsageCounter(usage_store, metrics) if settings.usage_counting and ring.enabled else None
        return cls(settings, ring, keys, usage_store, usage, limits, default_model,
                   job_body_bytes if job_body_bytes is not None else job_body_limits(JobsSettings()))

    def background(self) -> list[Callable[[], Awaitable[None]]]:
        """The loops the lifespan runs: the keys' refresh and the usage's flush (when on)."""
        if not self.ring.enabled:
            return []
        loops: list[Callable[[], Awaitable[None]]] = [self.ring.run]
        if self.usage is not None:
            usage = self.usage
            loops.append(lambda: usage.run(self.settings.usage_flush_s))
        return loops

    async def close(self) -> None:
        """The last usage written, the store closed (at shutdown)."""
        if self.usage is not None:
            try:
                await self.usage.flush()
            except Exception:  # noqa: BLE001 - logged by the flush; a shutdown goes on
                pass
        await self.limits.close()

    async def serve(self, policy: KeyPolicy, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a known key's request: refused by a limit, or the route's answer, counted."""
        path, method = scope["path"], scope["method"]
        try:
            refused = await self._rate(policy, scope)
        except LimitsUnavailable:
            refused = self._unavailable(scope)
        if refused is None:
            named = model_of(path)
            if named is not None and not policy.may_use(named):
                refused = self._forbidden(scope, named)
        if refused is not None:
            await refused(scope, receive, send)
            return
        job = path in JOB_PATHS
        if method != "POST" or not (job or _PREDICTION_PATH.fullmatch(path)):
            await app(scope, receive, send)
            return
        named = model_of(path)
        body = None
        many = job or not _is_predict(path)  # a request of several rows, counted from its body
        if policy.has_quota or (many and self.usage is not None) or (job and policy.models is not None):
            limit = self.job_body_bytes[path] if job else self.settings.max_body_bytes
            body, receive = await _buffered(receive, limit)
            if job and body is None and (policy.has_quota or policy.models is not None):
                await error_for(scope, 413, "payload_too_large", JOB_UNREAD_MESSAGE.format(limit=limit),
                                {})(scope, receive, send)
                return
        job_models = _job_models(path, body) if job and body is not None else []
        for wanted in job_models if job else [named]:
            name = wanted or self.default_model()
            if not policy.may_use(name):
                await self._forbidden(scope, name)(scope, receive, send)
                return
        rows = request_rows(path, body) if body is not None else None
        quotas: list[Quota] = []
        extra: list[tuple[bytes, bytes]] = []
        if policy.has_quota and rows:
            now = time.time()
            quotas = quotas_of(policy, job, now)
            try:
                charge = await self.limits.charge(quotas, rows) if quotas else None
            except LimitsUnavailable:
                await self._unavailable(scope)(scope, receive, send)
                return
            if charge is not None:
                if charge.refused is not None:
                    await over_quota(charge, rows, scope["state"].get("request_id"), now)(scope, receive, send)
                    return
                extra = rate_limit_headers(quotas, charge, now)
        answer = _Answer()
        try:
            await app(scope, receive, _watching(send, answer, extra, self.usage is not None))
        finally:  # a route that raised is a failure too: its rows given back, the request counted
            ok = 200 <= answer.status < 300
            if quotas and not ok:
                try:
                    await self.limits.charge(quotas, -rows)  # type: ignore[operator]  # rows > 0 when quotas
                except LimitsUnavailable:
                    pass
            if self.usage is not None:
                self._count(policy, path, job, rows, answer, job_models[0] if job_models else None, named)

    def _count(self, policy: KeyPolicy, path: str, job: bool, rows: int | None, answer: _Answer,
               job_model: str | None, named: str | None) -> None:
        assert self.usage is not None
        ok = 200 <= answer.status < 300
        counted_rows = _counted_rows(path, job, rows, answer)
        model_ms = answer.model_ms
        if answer.rows and counted_rows < answer.rows:  # a /predict answered from a gathered call: its share
            model_ms *= counted_rows / answer.rows
        self.usage.count(policy.key_id, self._usage_model(answer, job, ok, job_model, named),
                         0 if job or not ok else counted_rows, counted_rows if job and ok else 0,
                         model_ms if ok else 0.0)

    def _usage_model(self, answer: _Answer, job: bool, ok: bool, job_model: str | None, named: str | None) -> str:
        """The model a request is counted under: one that answered or took the job, never a made-up name."""
        if answer.model:
            return answer.model
        if job:
            return (job_model or self.default_model() or "") if ok else ""  # an accepted job's model is served
        return "" if named is not None else self.default_model() or ""

    async def _rate(self, policy: KeyPolicy, scope: Scope) -> ASGIApp | None:
        rate = policy.rate_limit_per_s if policy.rate_limit_per_s is not None else self.settings.rate_limit_per_s
        if rate <= 0:
            return None
        burst = (self.settings.rate_limit_burst if policy.rate_limit_per_s is None
                 else max(1, math.ceil(rate * self._burst_s)))
        wait = await self.limits.take(policy.key_id, rate, burst)
        if wait <= 0:
            return None
        seconds = str(max(1, math.ceil(wait)))
        return error_for(scope, 429, "rate_limited", RATE_LIMITED_MESSAGE,
                         {"Retry-After": seconds, "RateLimit-Limit": str(burst), "RateLimit-Remaining": "0",
                          "RateLimit-Reset": seconds})

    def _unavailable(self, scope: Scope) -> ASGIApp:
        return error_for(scope, 503, "limits_unavailable", UNAVAILABLE_MESSAGE,
                         {"Retry-After": str(max(1, self.settings.retry_after_s))})

    @staticmethod
    def _forbidden(scope: Scope, model: str | None) -> ASGIApp:
        return error_for(scope, 403, "model_forbidden",
                         f"this API key may not use the model {model!r}" if model
                         else "this API key may use only some models, and no model serves this route yet", {})


def _is_predict(path: str) -> bool:
    """``/predict`` or ``/models/{name}/predict``: one row."""
    return path.rstrip("/").endswith("/predict") and not path.rstrip("/").endswith("/batch_predict")


def _counted_rows(path: str, job: bool, asked: int | None, answer: _Answer) -> int:
    """A request's rows: ``/predict``'s one, else those its body asked for, else the worker's ``X-Rows``."""
    if not job and _is_predict(path):
        return 1
    if asked is not None or job:
        return asked or 0
    return answer.rows or 0


def _job_models(path: str, body: bytes) -> list[str | None]:
    """The model each job of a submission names (None: the default model)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    jobs = data.get("jobs") if path == "/jobs/batch" and isinstance(data, dict) else [data]
    if not isinstance(jobs, list):
        return []
    return [job.get("model") if isinstance(job.get("model"), str) else None for job in jobs if isinstance(job, dict)]


async def _buffered(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """The whole body, and a ``receive`` that gives it again; None past ``limit`` (the route answers 413)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > limit or not message.get("more_body", False):
            break
    complete = size <= limit and messages[-1]["type"] == "http.request" and not messages[-1].get("more_body")
    body = b"".join(message.get("body", b"") for message in messages) if complete else None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return body, replay


def _watching(send: Send, answer: _Answer, extra: list[tuple[bytes, bytes]], strip: bool) -> Send:
    """``send`` that notes the answer's status and usage headers, adds ``extra`` and drops the usage headers."""

    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            headers = []
            for name, value in message.get("headers", ()):
                if name == b"x-model-name":
                    text = value.decode("latin-1")
                    answer.model = urllib.parse.unquote(text) if "%" in text else text
                elif name == b"x-rows":
                    answer.rows = int(value) if value.isdigit() else None
                    if strip:
                        continue
                elif name == b"x-inference-time-ms":
                    try:
                        answer.model_ms = float(value)
                    except ValueError:
                        pass
                    if strip:
                        continue
                headers.append((name, value))
            message = {**message, "headers": headers + extra}
        await send(message)

    return watched
