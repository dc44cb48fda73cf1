"""A typed Python client of the gateway, sync and async.

    from inference_client import InferenceClient

    with InferenceClient("http://127.0.0.1:8080") as client:
        print(client.predict(row, return_probabilities=True))

``python -m inference_client --help`` is a small command line on top of it.
"""

from inference_client._async_client import AsyncInferenceClient
from inference_client._client import InferenceClient
from inference_client._exceptions import (
    AuthenticationError,
    ConflictError,
    InferenceError,
    InferenceTimeoutError,
    InvalidInputError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnavailableError,
)
from inference_client._models import (
    ActivationResult,
    BackendInfo,
    EarlierRun,
    GatewayHealth,
    GatewayInfo,
    JobErrorInfo,
    JobResult,
    JobStatus,
    ModelSummary,
    ModelVersion,
    ModelVersions,
    Prediction,
    Progress,
    WorkerChange,
)

__all__ = [
    "ActivationResult",
    "AsyncInferenceClient",
    "AuthenticationError",
    "BackendInfo",
    "ConflictError",
    "EarlierRun",
    "GatewayHealth",
    "GatewayInfo",
    "InferenceClient",
    "InferenceError",
    "InferenceTimeoutError",
    "InvalidInputError",
    "JobCancelledError",
    "JobErrorInfo",
    "JobFailedError",
    "JobResult",
    "JobStatus",
    "ModelSummary",
    "ModelVersion",
    "ModelVersions",
    "NotFoundError",
    "Prediction",
    "Progress",
    "RateLimitError",
    "ServerError",
    "UnavailableError",
    "WorkerChange",
]
