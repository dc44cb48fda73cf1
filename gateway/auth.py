"""Access control: API keys, as a plain ASGI middleware; their limits, quotas and usage in gateway/usage_control.py.

A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Only
SHA-256 digests of the keys are held (``API_KEYS`` entries ``sha256:<hex>``,
or plain keys hashed when the settings are read). A missing, malformed and
wrong key all get the same 401, so an answer never says which part was wrong.
The key's id (the first 12 hex digits of its digest, not a secret) goes into
``scope["state"]["key_id"]``: the access log shows it and jobs belong to it.
``ADMIN_API_KEYS`` (same form) are valid keys too, and only they set
``scope["state"]["admin"]``: the routes that change which model version serves,
and the key and usage admin routes, need it (``is_admin``). With no keys at all everyone is an admin.
Keys made at run time (``POST /admin/keys``) come from the job database (gateway/keys.py).

Constant time enough: the presented key is hashed and its digest looked up in
a dict. The lookup's timing (hash bucket, an early-exit ``==``) depends only on
how the digest of the attacker's own guess relates to a stored digest; turning
that into a key would need a SHA-256 preimage, so it tells nothing about the
keys. The one metrics key is compared with ``hmac.compare_digest``.

Open without a key: ``/gateway/health``, ``/v2/health/live|ready`` (probes), the docs (``/docs``,
``/redoc``, ``/openapi.json``, their assets) and the job page ``/jobs/ui``: pages that hold no data,
whose own calls to the API carry a key. ``/metrics`` takes only
``METRICS_API_KEY`` when that is set, and is open otherwise (Prometheus scrapes
it). With no ``API_KEYS`` everything else is open too and nothing is limited.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_response
from gateway.keys import key_id
from gateway.protocol import is_protocol_path, protocol_body

if TYPE_CHECKING:  # the settings import hash_key from here
    from gateway.settings import GatewaySettings
    from gateway.usage_control import UsageControl

__all__ = ["OPEN_PATHS", "access_middleware", "hash_key", "is_admin", "key_id", "presented_key"]

#: Probes (the gateway's own health, the protocol's liveness and readiness), the docs, the job and model pages.
OPEN_PATHS = frozenset({"/gateway/health", "/v2/health/live", "/v2/health/ready", "/docs", "/redoc", "/openapi.json",
                        "/jobs/ui", "/models/ui", "/usage/ui"})
OPEN_PREFIX = "/docs/assets/"
METRICS_PATH = "/metrics"
UNAUTHORIZED_MESSAGE = "a valid API key is required: send it as Authorization: Bearer <key> or X-API-Key: <key>"
_HASHED = re.compile(r"sha256:([0-9a-f]{64})")


def hash_key(entry: str) -> str:
    """An ``API_KEYS`` entry as ``sha256:<hex>``: a hashed entry as it is, a plain key hashed."""
    entry = entry.strip()
    if entry.startswith("sha256:"):
        if not _HASHED.fullmatch(entry.lower()):
            raise ValueError("a sha256: key entry must be 64 hex digits after the prefix")
        return entry.lower()
    if not entry:
        raise ValueError("an API key must not be empty")
    return "sha256:" + hashlib.sha256(entry.encode()).hexdigest()


def is_admin(scope: Scope) -> bool:
    """Whether the request may change model versions: an admin key, or access control off."""
    state = scope.get("state", {})
    return "key_id" not in state or bool(state.get("admin"))


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``; None if neither."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value
    return None


class AccessControl:
    """Who may call (keys), how often (rate limits), how much (quotas) and which models; and what they used."""

    def __init__(self, app: ASGIApp, *, control: UsageControl, metrics_key: str | None) -> None:
        self.app = app
        self._control = control
        self._ring = control.ring
        self._metrics_key = bytes.fromhex(metrics_key.removeprefix("sha256:")) if metrics_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == METRICS_PATH:
            if self._metrics_key is not None and not self._is_metrics_key(scope):
                await self._refuse(scope, receive, send)
                return
        elif self._ring.enabled and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX):
            key = presented_key(scope["headers"])
            policy = None if key is None else await self._ring.lookup_or_read(key)
            if policy is None:
                await self._refuse(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state["key_id"] = policy.key_id
            state["admin"] = policy.admin
            await self._control.serve(policy, self.app, scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _is_metrics_key(self, scope: Scope) -> bool:
        key = presented_key(scope["headers"])
        return key is not None and hmac.compare_digest(hashlib.sha256(key).digest(), self._metrics_key or b"")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_for(scope, 401, "unauthorized", UNAUTHORIZED_MESSAGE,
                             {"WWW-Authenticate": 'Bearer realm="gateway"'})
        await response(scope, receive, send)


def access_middleware(settings: GatewaySettings, control: UsageControl) -> list[Middleware]:
    """CORS (outside, so a browser's preflight needs no key) when origins are set, then access control."""
    cors = [Middleware(
        CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "Idempotency-Key"],
        expose_headers=["X-Request-ID", "Retry-After", "Location", "RateLimit-Limit", "RateLimit-Remaining",
                        "RateLimit-Reset"],
    )] if settings.cors_allow_origins else []
    return [*cors, Middleware(AccessControl, control=control, metrics_key=settings.metrics_api_key)]


def error_for(scope: Scope, status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    """The envelope, or on the Open Inference Protocol's paths the protocol's own body."""
    if is_protocol_path(scope["path"]):
        return protocol_body(status, message, headers)
    return error_response(status, code, message, scope.setdefault("state", {}).get("request_id"), headers=headers)
