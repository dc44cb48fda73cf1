"""Errors the worker answers with, each a status and a stable code.

    WorkerError
    ├── MalformedRequest   400  the body is not JSON
    ├── MalformedBody      400  a binary rows body whose header or length is wrong (common/binary_rows.py)
    ├── InvalidVersion     400  a version label that is not 1-64 letters, digits, '.', '_' or '-'
    ├── ModelUnloaded      404  the model was unloaded (OIP unload): nothing serves predictions
    ├── VersionNotServed   404  a version asked for by name is not loaded as active or canary
    ├── WrongModel         409  a version sent for another model than the one served
    ├── VersionConflict    409  a serving change names a version not loaded, drops one that serves, or is older
    │                           than the last one taken (stale_generation)
    ├── PayloadTooLarge    413  too many bytes or rows
    ├── ClientGone         499  the client left before its body arrived (logged, never answered)
    ├── InvalidInput       422  rows of the wrong shape, type or value, or with NaN / Infinity
    ├── VersionRefused     422  a version that fails a check (load, trace, outputs, example); nothing changed
    ├── QueueFull          503  the batcher is at its bound (sent with Retry-After)
    ├── NotReady           503  the model is still loading or warming up
    ├── StartFailed        503  the model failed to load or broke the contract (the worker exits)
    └── BatchFailed        500  the model call failed; every request of the batch gets it

They travel to the client in the project's one envelope,
``{"error": {"code", "message"}, "request_id"}``.
"""

from __future__ import annotations


class WorkerError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedRequest(WorkerError):
    status_code = 400
    code = "malformed_json"


class MalformedBody(WorkerError):
    status_code = 400
    code = "malformed_body"


class InvalidVersion(WorkerError):
    status_code = 400
    code = "invalid_version"


class ModelUnloaded(WorkerError):
    status_code = 404
    code = "model_unloaded"


class VersionNotServed(WorkerError):
    status_code = 404
    code = "version_not_loaded"


class WrongModel(WorkerError):
    status_code = 409
    code = "wrong_model"


class VersionConflict(WorkerError):
    status_code = 409

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class VersionRefused(WorkerError):
    status_code = 422
    code = "version_refused"


class PayloadTooLarge(WorkerError):
    status_code = 413
    code = "payload_too_large"


class ClientGone(WorkerError):
    status_code = 499
    code = "client_closed_request"


class InvalidInput(WorkerError):
    status_code = 422
    code = "invalid_input"


class QueueFull(WorkerError):
    status_code = 503
    code = "queue_full"


class NotReady(WorkerError):
    status_code = 503
    code = "not_ready"


class StartFailed(WorkerError):
    status_code = 503
    code = "start_failed"


class BatchFailed(WorkerError):
    status_code = 500
    code = "batch_failed"
