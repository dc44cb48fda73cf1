"""What the client raises: one tree, each error carrying the gateway's envelope.

    InferenceError                  status, code, message, request_id
    ├── InvalidInputError     4xx   400 malformed, 413 too large, 422 invalid (and any other 4xx)
    ├── AuthenticationError   401, 403: missing, unknown or forbidden API key
    ├── NotFoundError         404   no such route or job
    ├── ConflictError         409   a job's result before it succeeded; cancelling a finished job
    ├── UnavailableError      503 once retries are spent, or the gateway cannot be reached
    │   └── RateLimitError    429 once retries are spent
    ├── ServerError           500, 502 and other 5xx
    ├── JobFailedError              ``wait`` saw the job fail or expire; ``job`` holds its last status
    │   └── JobCancelledError       ``wait`` saw the job cancelled
    └── InferenceTimeoutError 504, an HTTP timeout, or ``wait`` past its deadline (also a TimeoutError)

Responses and transport errors are mapped here, once, for the sync and the async client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from inference_client._models import JobStatus


class InferenceError(Exception):
    """An error answer of the gateway (its envelope's code and message), or a failure to get one."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "error", request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # None when no HTTP answer came
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after  # seconds, from the last answer's Retry-After

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{where}{self.code}: {self.message}{request}"


class InvalidInputError(InferenceError):
    pass


class AuthenticationError(InferenceError):
    pass


class NotFoundError(InferenceError):
    pass


class ConflictError(InferenceError):
    pass


class UnavailableError(InferenceError):
    pass


class RateLimitError(UnavailableError):
    pass


class ServerError(InferenceError):
    pass


class InferenceTimeoutError(InferenceError, TimeoutError):
    pass


class JobFailedError(InferenceError):
    def __init__(self, job: JobStatus) -> None:
        error = job.error
        super().__init__(
            error.message if error else f"job {job.job_id} is {job.status}",
            code=error.code if error else f"job_{job.status}",
        )
        self.job = job


class JobCancelledError(JobFailedError):
    pass


_BY_STATUS: dict[int, type[InferenceError]] = {
    401: AuthenticationError, 403: AuthenticationError, 404: NotFoundError, 409: ConflictError,
    429: RateLimitError, 503: UnavailableError, 504: InferenceTimeoutError,
}


def error_class(status: int) -> type[InferenceError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InvalidInputError if status < 500 else ServerError


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def from_response(response: httpx.Response) -> InferenceError:
    """The exception for an error answer; a body that is not the envelope still gives a readable one."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "code" in error:
        code, message = str(error["code"]), str(error.get("message", ""))
    else:
        code = f"http_{response.status_code}"
        message = response.text[:200] or response.reason_phrase
    request_id = body.get("request_id") if isinstance(body, dict) else None
    return error_class(response.status_code)(
        message, status=response.status_code, code=code,
        request_id=request_id or response.headers.get("x-request-id"), retry_after=_retry_after(response),
    )


def raise_for_response(response: httpx.Response) -> None:
    if not response.is_success:
        raise from_response(response)


@contextlib.contextmanager
def transport_errors(url: str) -> Iterator[None]:
    """Turn httpx's transport errors into this tree (a sync ``with`` also wraps an ``await``)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise InferenceTimeoutError(f"no answer from {url} in time ({type(exc).__name__})", code="timeout") from exc
    except httpx.TransportError as exc:
        raise UnavailableError(f"cannot reach {url}: {exc or type(exc).__name__}", code="connection_failed") from exc
