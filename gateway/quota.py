"""Quotas: the rows a request asks for, a key's quotas in their current periods, and the answers that say so.

Rows: ``/predict`` is one, ``/batch_predict`` the length of its array, an Open Inference Protocol ``infer`` the
first input's first dimension, a job its inline ``inputs`` (``/jobs/batch``: every job's). Periods are UTC: a
day ends at midnight, a month on the first. Prediction rows and job rows both count against ``rows_per_day``
and ``rows_per_month``; job rows against ``job_rows_per_day`` too. A request is charged all its rows at once
or refused whole, so a job is never cut in the middle.

Over a quota: 429 with the quota's name, limit, use and reset in the error, ``Retry-After`` to the reset and the
IETF draft's ``RateLimit-Limit``/``RateLimit-Remaining``/``RateLimit-Reset``; an answer within the quotas carries
the three ``RateLimit-*`` headers of its tightest quota.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
from starlette.responses import JSONResponse

from gateway.keys import KeyPolicy
from gateway.shared_limits import Charge, Quota

JOB_PATHS = frozenset({"/jobs", "/jobs/batch"})


def request_rows(path: str, body: bytes) -> int | None:
    """Rows the request asks for; None when the body is not what the route takes (the route answers that)."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if path in JOB_PATHS:
        jobs = data.get("jobs") if path == "/jobs/batch" and isinstance(data, dict) else [data]
        if not isinstance(jobs, list):
            return None
        return sum(len(job["inputs"]) for job in jobs
                   if isinstance(job, dict) and isinstance(job.get("inputs"), list))
    if path.endswith("/batch_predict"):
        return len(data) if isinstance(data, list) else None
    if path.endswith("/infer"):
        try:
            return max(1, int(data["inputs"][0]["shape"][0]))
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return 1


def quotas_of(policy: KeyPolicy, jobs: bool, now: float) -> list[Quota]:
    """The key's quotas that a request counts against (``jobs``: a job submission), in their current periods."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    tomorrow = today + dt.timedelta(days=1)
    next_month = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    periods = [("rows_per_day", policy.rows_per_day, today, tomorrow),
               ("rows_per_month", policy.rows_per_month, today.replace(day=1), next_month)]
    if jobs:
        periods.append(("job_rows_per_day", policy.job_rows_per_day, today, tomorrow))
    return [Quota(name, limit, f"{policy.key_id}:{name}:{start.isoformat()}", _epoch(end))
            for name, limit, start, end in periods if limit is not None]


def _epoch(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def rate_limit_headers(quotas: list[Quota], charge: Charge, now: float) -> list[tuple[bytes, bytes]]:
    """``RateLimit-*`` of the quota with the fewest rows left."""
    left, quota = min(((quota.limit - used, quota) for quota, used in zip(quotas, charge.used, strict=True)),
                      key=lambda pair: pair[0])  # Quotas do not compare: a tie is the first quota's
    return [(b"ratelimit-limit", str(quota.limit).encode()), (b"ratelimit-remaining", str(max(0, left)).encode()),
            (b"ratelimit-reset", str(max(1, math.ceil(quota.resets_at - now))).encode())]


def over_quota(charge: Charge, rows: int, request_id: str | None, now: float) -> JSONResponse:
    quota = charge.refused
    assert quota is not None
    used = charge.used[0]
    reset_in = max(1, math.ceil(quota.resets_at - now))
    error = {
        "code": "quota_exceeded",
        "message": f"this API key's {quota.name} quota is {quota.limit} rows and {used} are used: this request's "
                   f"{rows} rows would cross it; it resets at {_iso(quota.resets_at)}",
        "quota": quota.name, "limit": quota.limit, "used": used, "requested": rows,
        "resets_at": _iso(quota.resets_at),
    }
    headers = {"Retry-After": str(reset_in), "RateLimit-Limit": str(quota.limit),
               "RateLimit-Remaining": str(max(0, quota.limit - used)), "RateLimit-Reset": str(reset_in)}
    return JSONResponse({"error": error, "request_id": request_id}, 429, headers=headers)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")
