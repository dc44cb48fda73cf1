"""The worker's JSON answers: the project's error envelope, and the Open Inference Protocol's body on /v2.

A 503 always carries ``Retry-After``: the worker is loading, failed, or its queue is full.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from common.envelope import error_body
from worker.errors import WorkerError


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def _with_retry_after(status_code: int, headers: dict[str, str] | None) -> dict[str, str] | None:
    return {**(headers or {}), "Retry-After": "1"} if status_code == 503 else headers


def error_response(error: WorkerError, request_id: str | None, headers: dict[str, str] | None = None) -> Response:
    body = error_body(error.code, error.message, request_id)
    return json_response(body, error.status_code, _with_retry_after(error.status_code, headers))


def protocol_error(message: str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    """An error on a ``/v2`` route: the protocol's ``{"error": "..."}``, which its clients read."""
    return json_response({"error": message}, status_code, _with_retry_after(status_code, headers))
