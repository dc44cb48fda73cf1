"""The gateway's part of the Open Inference Protocol (KServe V2 REST).

Liveness and readiness are the gateway's own answers: live while it runs,
ready while at least one worker is healthy. Everything else under ``/v2``
(server and model metadata, model readiness, infer) is proxied to a worker
like ``/predict``, body bytes untouched; the gateway's own errors on those
paths use the protocol's ``{"error": "..."}`` body, which its clients read.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.backends import BackendPool
from gateway.errors import GatewayError

#: The routes under this prefix are the protocol's.
PREFIX = "/v2"


def is_protocol_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def protocol_body(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error in the protocol's ``{"error": "..."}`` body, which its clients read."""
    return Response(orjson.dumps({"error": message}), status, headers, media_type="application/json")


def protocol_error_response(error: GatewayError, request_id: str | None, retry_after_s: int) -> Response:
    """A gateway error on a ``/v2`` path, in the protocol's body (the request id still travels as a header)."""
    return protocol_body(error.status_code, error.message,
                         {"Retry-After": str(retry_after_s)} if error.retry_after else None)


def protocol_health_routes(pool: BackendPool) -> list[BaseRoute]:
    async def live(request: Request) -> Response:
        return Response(orjson.dumps({"live": True}), media_type="application/json")

    async def ready(request: Request) -> Response:
        alive, _ = pool.summary()
        return Response(orjson.dumps({"ready": alive > 0}), 200 if alive else 503, media_type="application/json")

    return [Route(f"{PREFIX}/health/live", live), Route(f"{PREFIX}/health/ready", ready)]
