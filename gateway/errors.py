"""Errors the gateway answers with, and the one JSON envelope they travel in.

    GatewayError
    ├── MalformedRequest   400  unreadable body
    ├── PayloadTooLarge    413  body over MAX_BODY_BYTES
    ├── UnknownModel       404  a model name no worker serves (the body lists the served ones)
    ├── ClientClosedRequest 499 the client left before its body arrived (nginx's code; only logs see it)
    ├── NoWorkerAvailable  503  no healthy worker (sent at once, with Retry-After)
    ├── Overloaded         503  every healthy worker at its in-flight bound (Retry-After)
    ├── UpstreamFailed     502  workers refused or dropped the request on every try
    ├── UpstreamBadResponse 502 a worker's answer was not HTTP the gateway can read
    └── UpstreamTimeout    504  no answer within REQUEST_TIMEOUT_S

Transport errors of the worker client are mapped to these in one place,
``common.forwarder``. Tracebacks go to the log, never to the client.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    status_code = 500
    code = "internal_error"
    retry_after = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedRequest(GatewayError):
    status_code = 400
    code = "malformed_request"


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "payload_too_large"


class UnknownModel(GatewayError):
    """A model name no worker reports; ``models``: the names that are served, for the client to pick from."""

    status_code = 404
    code = "model_not_found"

    def __init__(self, message: str, models: list[str] | None = None) -> None:
        super().__init__(message)
        self.models = models


class ClientClosedRequest(GatewayError):
    status_code = 499
    code = "client_closed_request"


class BodyTimedOut(GatewayError):
    """The body did not arrive within BODY_TIMEOUT_S: the connection's protocol answered 408 and closed it."""

    status_code = 408
    code = "request_timeout"


class NoWorkerAvailable(GatewayError):
    status_code = 503
    code = "no_worker_available"
    retry_after = True


class Overloaded(GatewayError):
    status_code = 503
    code = "overloaded"
    retry_after = True


class UpstreamFailed(GatewayError):
    status_code = 502
    code = "upstream_failed"


class UpstreamBadResponse(GatewayError):
    status_code = 502
    code = "upstream_bad_response"


class UpstreamTimeout(GatewayError):
    status_code = 504
    code = "upstream_timeout"


def error_body(code: str, message: str, request_id: str | None, models: list[str] | None = None) -> bytes:
    """The one error envelope, as JSON bytes (also written raw by ``gateway.http_protocol``); ``models``: the
    served model names, on a ``model_not_found``."""
    error: dict[str, object] = {"code": code, "message": message}
    if models is not None:
        error["models"] = models
    return orjson.dumps({"error": error, "request_id": request_id})


def error_response(
    status_code: int, code: str, message: str, request_id: str | None, retry_after_s: int | None = None,
    headers: Mapping[str, str] | None = None, models: list[str] | None = None,
) -> Response:
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return Response(error_body(code, message, request_id, models), status_code, headers,
                    media_type="application/json")


def gateway_error_response(error: GatewayError, request_id: str | None, retry_after_s: int) -> Response:
    return error_response(
        error.status_code, error.code, error.message, request_id, retry_after_s if error.retry_after else None,
        models=getattr(error, "models", None),
    )
