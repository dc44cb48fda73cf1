"""A known key's request through UsageControl alone: a job read to its own limit, refunds and counts when a route
raises, and usage counted only under models that answered."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.keys import KeyPolicy
from gateway.quota import rate_limit_headers
from gateway.settings import GatewaySettings
from gateway.shared_limits import Charge, Quota
from gateway.usage import UsageCounter, UsageMetrics
from gateway.usage_control import UsageControl

JOB_LIMIT = 4096
DEFAULT_MODEL = "served"


class CountingLimits:
    """Never rate limits; notes every charge (negative: a refund)."""

    def __init__(self) -> None:
        self.charges: list[int] = []

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        return 0.0

    async def charge(self, quotas: Sequence[Quota], rows: int) -> Charge:
        self.charges.append(rows)
        return Charge(None, tuple(rows for _ in quotas))


def control(registry: CollectorRegistry, limits: CountingLimits, max_models: int = 10) -> UsageControl:
    usage = UsageCounter(None, UsageMetrics(registry, 10, max_models))  # type: ignore[arg-type]  # never flushed
    return UsageControl(GatewaySettings(max_body_bytes=64), None, None, None, usage,  # type: ignore[arg-type]
                        limits, lambda: DEFAULT_MODEL,  # type: ignore[arg-type]
                        {"/jobs": JOB_LIMIT, "/jobs/batch": JOB_LIMIT})


async def call(usage_control: UsageControl, policy: KeyPolicy, path: str, body: bytes,
               app: JSONResponse | None = None) -> tuple[int, dict]:
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": [], "state": {}}
    chunks = [body[start:start + 1000] for start in range(0, len(body), 1000)] or [b""]
    messages = [{"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
                for index, chunk in enumerate(chunks)]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def accepted(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"accepted": True}, 202)(scope, receive, send)

    await usage_control.serve(policy, app or accepted, scope, receive, send)
    answer = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(answer)


def job(model: str, padding: int) -> bytes:
    return orjson.dumps({"task": "batch_predict", "model": model, "inputs": [{"x": "p" * padding}]})


async def test_a_job_past_the_prediction_body_limit_is_still_checked_against_the_key_s_models() -> None:
    limited = KeyPolicy("k", models=frozenset({DEFAULT_MODEL}))
    usage_control = control(CollectorRegistry(), CountingLimits())
    status, answer = await call(usage_control, limited, "/jobs", job("other", 1000))
    assert status == 403 and answer["error"]["code"] == "model_forbidden"
    assert (await call(usage_control, limited, "/jobs", job(DEFAULT_MODEL, 1000)))[0] == 202


@pytest.mark.parametrize("policy", [KeyPolicy("k", models=frozenset({DEFAULT_MODEL})), KeyPolicy("k", rows_per_day=9)])
async def test_a_job_too_large_to_check_is_413_for_a_key_with_some_models_or_a_quota(policy: KeyPolicy) -> None:
    limits = CountingLimits()
    status, answer = await call(control(CollectorRegistry(), limits), policy, "/jobs", job(DEFAULT_MODEL, JOB_LIMIT))
    assert status == 413 and answer["error"]["code"] == "payload_too_large" and str(JOB_LIMIT) in answer["error"][
        "message"]
    assert limits.charges == []


async def test_a_route_that_raises_gives_its_rows_back_and_is_counted() -> None:
    registry, limits = CollectorRegistry(), CountingLimits()

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("the route failed")

    with pytest.raises(RuntimeError):
        await call(control(registry, limits), KeyPolicy("k", rows_per_day=9), "/batch_predict", b"[{}, {}]",
                   broken)  # type: ignore[arg-type]
    assert limits.charges == [2, -2]
    assert registry.get_sample_value("gateway_key_requests_total", {"key": "k", "model": DEFAULT_MODEL}) == 1


async def test_usage_is_never_counted_under_a_model_only_the_path_named() -> None:
    registry = CollectorRegistry()
    unknown = JSONResponse({"error": {"code": "unknown_model"}}, 404)
    usage_control = control(registry, CountingLimits())
    for index in range(3):
        assert (await call(usage_control, KeyPolicy("k"), f"/models/made-up-{index}/predict", b"{}", unknown))[0] == 404
    assert registry.get_sample_value("gateway_key_requests_total", {"key": "k", "model": ""}) == 3
    assert not [sample for metric in registry.collect() for sample in metric.samples
                if "made-up" in sample.labels.get("model", "")]


def test_model_labels_past_the_cap_are_other() -> None:
    registry = CollectorRegistry()
    counter = UsageCounter(None, UsageMetrics(registry, 10, 1))  # type: ignore[arg-type]  # never flushed
    for model in ("first", "second", "third"):
        counter.count("k", model, 1, 0, 0.0)
    assert registry.get_sample_value("gateway_key_rows_total", {"key": "k", "model": "first"}) == 1
    assert registry.get_sample_value("gateway_key_rows_total", {"key": "k", "model": "other"}) == 2


def test_quotas_with_the_same_rows_left_make_the_rate_limit_headers() -> None:
    quotas = [Quota("rows_per_day", 10, "k:day", 1000.0), Quota("rows_per_month", 10, "k:month", 2000.0)]
    headers = dict(rate_limit_headers(quotas, Charge(None, (4, 4)), 0.0))
    assert headers == {b"ratelimit-limit": b"10", b"ratelimit-remaining": b"6", b"ratelimit-reset": b"1000"}
