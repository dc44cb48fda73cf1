"""Keys made at run time and usage: ``/admin/keys`` (admins), ``GET /usage`` (one's own), ``GET /admin/usage``.

``POST /admin/keys`` answers 201 with the new key, shown this once (only its digest is kept). ``DELETE
/admin/keys/{id}`` revokes a key: this process refuses it at once, every other within ``KEYS_REFRESH_S``. The
settings' keys (``API_KEYS``, ``ADMIN_API_KEYS``) are listed too and are changed only there.

Usage is read from the database after this process's counts are written; other processes' counts arrive
within their ``USAGE_FLUSH_S``. ``by``: ``hour``, ``day`` (the default) or ``month``; ``since``/``until``: UTC
dates (``YYYY-MM-DD``) or times (ISO 8601), by default the current month.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from common.rows import validation_message
from gateway.auth import is_admin
from gateway.errors import GatewayError, error_response
from gateway.keys import KeyPolicy, key_id
from gateway.quota import quotas_of
from gateway.request_body import read_body
from gateway.shared_limits import LimitsUnavailable
from gateway.usage_control import UsageControl
from jobs.errors import JobsUnavailable
from jobs.usage import StoredKey, UsageRow

#: Made keys start so, so a leaked one is easy to find in logs and code.
KEY_PREFIX = "gk_"
_PAGE = Path(__file__).with_name("usage_ui.html")
#: Bounds of a key's limits: a rate JSON can write but the listing cannot (infinity), or a count past the
#: database's 64-bit integers, would be stored and break every later read.
MAX_RATE_PER_S = 1e6
MAX_ROWS = 2**62


class NewKey(BaseModel):
    """Body of ``POST /admin/keys``: all but the name optional (None: the gateway's default, no quota)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="What the key is for; not secret.")
    admin: bool = Field(False, description="Whether the key may manage keys and model versions.")
    models: list[str] | None = Field(None, description="The model names it may use; default: every model.")
    rate_limit_per_s: float | None = Field(None, gt=0, le=MAX_RATE_PER_S, allow_inf_nan=False,
                                           description="Requests a second; default RATE_LIMIT_PER_S.")
    rows_per_day: int | None = Field(None, ge=0, le=MAX_ROWS, description="Rows a UTC day (predictions and jobs).")
    rows_per_month: int | None = Field(None, ge=0, le=MAX_ROWS,
                                       description="Rows a UTC month (predictions and jobs).")
    job_rows_per_day: int | None = Field(None, ge=0, le=MAX_ROWS, description="Job rows a UTC day.")


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def _answering(endpoint: Endpoint, admin: bool) -> Endpoint:
    """The endpoint, admin-only if ``admin``, with its refusals and the database's outage as JSON errors."""

    async def answer(request: Request) -> Response:
        request_id = request.scope["state"].get("request_id")
        try:
            if admin and not is_admin(request.scope):
                raise _Refused(403, "forbidden", "managing keys and reading every key's usage needs an admin key")
            return await endpoint(request)
        except _Refused as exc:
            return error_response(exc.status, exc.code, exc.message, request_id)
        except JobsUnavailable as exc:
            return error_response(503, "jobs_unavailable", exc.message, request_id, retry_after_s=1)

    return answer


def key_routes(control: UsageControl) -> list[Route]:
    async def create_key(request: Request) -> Response:
        try:
            body = NewKey.model_validate_json(
                await read_body(request.scope, request.receive, control.settings.key_body_max_bytes))
        except GatewayError as exc:  # too large, unreadable, or the client left
            raise _Refused(exc.status_code, exc.code, exc.message) from None
        except ValidationError as exc:
            raise _Refused(422, "invalid_key", validation_message(exc)) from None
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hashlib.sha256(plain.encode()).hexdigest()
        stored = StoredKey(
            key_id=key_id(digest), digest=digest, name=body.name, admin=body.admin,
            models=tuple(body.models) if body.models is not None else None, rate_limit_per_s=body.rate_limit_per_s,
            rows_per_day=body.rows_per_day, rows_per_month=body.rows_per_month,
            job_rows_per_day=body.job_rows_per_day, created_at=time.time(), revoked_at=None,
        )
        await control.keys.create(stored)
        control.ring.add(stored)
        shown = {"id": stored.key_id, "key": plain, **stored.public()}
        del shown["key_id"]
        return JSONResponse(shown, 201, headers={"Location": f"/admin/keys/{stored.key_id}"})

    async def list_keys(request: Request) -> Response:
        stored = [{"id": key.key_id, "source": "database", **key.public()} for key in await control.keys.all()]
        for key in stored:
            del key["key_id"]
        configured = [{"id": policy.key_id, "source": "settings", "admin": policy.admin,
                       "models": sorted(policy.models) if policy.models is not None else None}
                      for policy in control.ring.configured()]
        return JSONResponse({"keys": configured + stored})

    async def revoke_key(request: Request) -> Response:
        wanted = request.path_params["key_id"]
        if any(policy.key_id == wanted for policy in control.ring.configured()):
            raise _Refused(409, "configured_key", "this key is set in API_KEYS or ADMIN_API_KEYS: remove it there")
        revoked = await control.keys.revoke(wanted)
        if revoked is None:
            raise _Refused(404, "key_not_found", f"no key has the id {wanted!r}")
        await control.ring.read()
        shown = {"id": revoked.key_id, **revoked.public()}
        del shown["key_id"]
        return JSONResponse(shown)

    async def own_usage(request: Request) -> Response:
        key = request.scope["state"].get("key_id")
        if key is None:
            raise _Refused(409, "access_control_off", "usage is counted per API key, and access control is off")
        body = await _usage(control, request, key)
        policy = control.ring.policy_of(key)
        if policy is not None and policy.has_quota:
            body["quotas"] = await _quotas(control, policy)
        return JSONResponse(body)

    async def every_usage(request: Request) -> Response:
        return JSONResponse(await _usage(control, request, request.query_params.get("key")))

    async def page(request: Request) -> Response:
        return HTMLResponse(_PAGE.read_text())

    return [
        Route("/admin/keys", _answering(create_key, admin=True), methods=["POST"]),
        Route("/admin/keys", _answering(list_keys, admin=True), methods=["GET"]),
        Route("/admin/keys/{key_id}", _answering(revoke_key, admin=True), methods=["DELETE"]),
        Route("/usage", _answering(own_usage, admin=False), methods=["GET"]),
        Route("/admin/usage", _answering(every_usage, admin=True), methods=["GET"]),
        Route("/usage/ui", page, methods=["GET"]),
    ]


_PERIODS = {"hour": "%Y-%m-%dT%H:00Z", "day": "%Y-%m-%d", "month": "%Y-%m"}


def _when(raw: str | None, default: dt.datetime, name: str) -> dt.datetime:
    if raw is None:
        return default
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(422, "invalid_period", f"{name}: a UTC date (YYYY-MM-DD) or ISO 8601 time") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


async def _usage(control: UsageControl, request: Request, key: str | None) -> dict[str, Any]:
    """Usage rows summed per period and model (and key, for every key's), with totals."""
    by = request.query_params.get("by", "day")
    if by not in _PERIODS:
        raise _Refused(422, "invalid_period", "by: hour, day or month")
    now = dt.datetime.now(dt.UTC)
    since = _when(request.query_params.get("since"), now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
                  "since")
    until = _when(request.query_params.get("until"), now, "until")
    if control.usage is not None:
        await control.usage.flush()
    rows = await control.usage_store.between(int(since.timestamp()) // 3600 * 3600, int(until.timestamp()) + 1, key)
    periods: dict[tuple[str, str, str], dict[str, Any]] = {}
    totals = {"requests": 0, "rows": 0, "job_rows": 0, "model_ms": 0.0}
    for row in rows:
        period = dt.datetime.fromtimestamp(row.hour, dt.UTC).strftime(_PERIODS[by])
        cell = periods.setdefault((period, row.key_id, row.model_name), {
            "period": period, "key_id": row.key_id, "model": row.model_name,
            "requests": 0, "rows": 0, "job_rows": 0, "model_ms": 0.0})
        _add(cell, row)
        _add(totals, row)
    return {"by": by, "since": since.isoformat(), "until": until.isoformat(), "key_id": key,
            "usage": list(periods.values()), "totals": totals}


def _add(into: dict[str, Any], row: UsageRow) -> None:
    into["requests"] += row.requests
    into["rows"] += row.rows
    into["job_rows"] += row.job_rows
    into["model_ms"] = round(into["model_ms"] + row.model_ms, 3)


async def _quotas(control: UsageControl, policy: KeyPolicy) -> list[dict[str, Any]] | dict[str, str]:
    """The key's quotas: limit, rows used (the shared store's count) and reset."""
    now = time.time()
    quotas = quotas_of(policy, True, now)
    try:
        charge = await control.limits.charge(quotas, 0)
    except LimitsUnavailable as exc:
        return {"error": str(exc)}
    return [{"name": quota.name, "limit": quota.limit, "used": used,
             "resets_at": dt.datetime.fromtimestamp(quota.resets_at, dt.UTC).isoformat().replace("+00:00", "Z")}
            for quota, used in zip(quotas, charge.used, strict=True)]
