"""Access control: API keys and a rate limit per key, as a plain ASGI middleware.

A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Only
SHA-256 digests of the keys are held (``API_KEYS`` entries ``sha256:<hex>``,
or plain keys hashed when the settings are read). A missing, malformed and
wrong key all get the same 401, so an answer never says which part was wrong.
The key's id (the first 12 hex digits of its digest, not a secret) goes into
``scope["state"]["key_id"]``: the access log shows it and jobs belong to it.
``ADMIN_API_KEYS`` (same form) are valid keys too, and only they set
``scope["state"]["admin"]``: the routes that change which model version serves
need it (``is_admin``). With no keys at all everyone is an admin.

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
import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_response
from gateway.protocol import is_protocol_path, protocol_body
from gateway.rate_limit import RateLimiter

if TYPE_CHECKING:  # the settings import hash_key from here
    from gateway.settings import GatewaySettings

#: Probes (the gateway's own health, the protocol's liveness and readiness), the docs, the job and model pages.
OPEN_PATHS = frozenset({"/gateway/health", "/v2/health/live", "/v2/health/ready", "/docs", "/redoc", "/openapi.json",
                        "/jobs/ui", "/models/ui"})
OPEN_PREFIX = "/docs/assets/"
METRICS_PATH = "/metrics"
RATE_LIMITED_MESSAGE = "this API key is over its rate limit; retry after the Retry-After seconds"
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


def key_id(hashed: str) -> str:
    """A key's name in logs and job records: a prefix of its digest, never the key."""
    return hashed.removeprefix("sha256:")[:12]


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
    def __init__(
        self, app: ASGIApp, *, api_keys: list[str], metrics_key: str | None, limiter: RateLimiter | None,
        admin_keys: Sequence[str] = (),
    ) -> None:
        self.app = app
        self._keys = {bytes.fromhex(hashed.removeprefix("sha256:")): key_id(hashed)
                      for hashed in (*api_keys, *admin_keys)}
        self._admins = frozenset(key_id(hashed) for hashed in admin_keys)
        self._metrics_key = bytes.fromhex(metrics_key.removeprefix("sha256:")) if metrics_key else None
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == METRICS_PATH:
            if self._metrics_key is not None and not self._is_metrics_key(scope):
                await self._refuse(scope, receive, send)
                return
        elif self._keys and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX):
            identity = self._identify(scope)
            if identity is None:
                await self._refuse(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state["key_id"] = identity
            state["admin"] = identity in self._admins
            wait = self._limiter.take(identity) if self._limiter is not None else 0.0
            if wait > 0.0:
                response = _error(scope, 429, "rate_limited", RATE_LIMITED_MESSAGE,
                                  {"Retry-After": str(max(1, math.ceil(wait)))})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _identify(self, scope: Scope) -> str | None:
        key = presented_key(scope["headers"])
        if key is None:
            return None
        return self._keys.get(hashlib.sha256(key).digest())

    def _is_metrics_key(self, scope: Scope) -> bool:
        key = presented_key(scope["headers"])
        return key is not None and hmac.compare_digest(hashlib.sha256(key).digest(), self._metrics_key or b"")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(scope, 401, "unauthorized", UNAUTHORIZED_MESSAGE,
                          {"WWW-Authenticate": 'Bearer realm="gateway"'})
        await response(scope, receive, send)


def access_middleware(settings: GatewaySettings) -> list[Middleware]:
    """CORS (outside, so a browser's preflight needs no key) when origins are set, then access control."""
    limiter = None
    if (settings.api_keys or settings.admin_api_keys) and settings.rate_limit_per_s > 0:
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    cors = [Middleware(
        CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "Idempotency-Key"],
        expose_headers=["X-Request-ID", "Retry-After", "Location"],
    )] if settings.cors_allow_origins else []
    return [*cors, Middleware(AccessControl, api_keys=settings.api_keys, metrics_key=settings.metrics_api_key,
                              limiter=limiter, admin_keys=settings.admin_api_keys)]


def _error(scope: Scope, status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    """The envelope, or on the Open Inference Protocol's paths the protocol's own body."""
    if is_protocol_path(scope["path"]):
        return protocol_body(status, message, headers)
    return error_response(status, code, message, scope.setdefault("state", {}).get("request_id"), headers=headers)
