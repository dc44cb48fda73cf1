"""Each API call as data: what to send and how to read the answer, without doing any I/O.

The sync and the async client send the same :class:`Call` objects, so a route is described once.
A new family of routes (the Open Inference Protocol's ``/v2/...``) is a new set of these builders
and one thin method per client.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import httpx
from httpx_retries import Retry
from pydantic import BaseModel, TypeAdapter, ValidationError

from inference_client._exceptions import ServerError, raise_for_response
from inference_client._models import (
    ActivationResult,
    GatewayHealth,
    GatewayInfo,
    JobBatch,
    JobPage,
    JobResult,
    JobStatus,
    ModelSummary,
    ModelVersion,
    ModelVersions,
    Prediction,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
#: One input row: nested lists of numbers, or anything with ``tolist()`` (a NumPy or JAX array).
Row = Any

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Jobs per GET /jobs page the listing asks for: within the gateway's default JOB_LIST_MAX_LIMIT (200).
JOB_PAGE = 100
_NO_RETRY = Retry(total=0)
_PREDICTIONS = TypeAdapter(list[Prediction])


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    files: Any = None  # multipart/form-data fields: [(name, (file name, bytes))]
    headers: Mapping[str, str] = field(default_factory=dict)
    retry: bool = True
    follow_redirects: bool = False

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` / ``httpx.AsyncClient.request``."""
        return {
            "method": self.method, "url": self.path, "json": self.json, "files": self.files,
            "headers": dict(self.headers),
            "follow_redirects": self.follow_redirects, "extensions": {} if self.retry else {"retry": _NO_RETRY},
        }


def plain(value: Any) -> Any:
    """``value`` with arrays (anything with ``tolist()``) turned into lists, so it is JSON; NumPy is optional."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError("batch_size: at least 1")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prediction_inputs(rows: Iterable[Row], return_probabilities: bool = False) -> list[dict[str, Any]]:
    """``/batch_predict`` items for rows (an array's first axis is the rows)."""
    rows = plain(rows if hasattr(rows, "tolist") else list(rows))
    return [{"input_data": row, "return_probabilities": return_probabilities} for row in rows]


def _validated(response: httpx.Response, validate: Callable[[bytes], T]) -> T:
    raise_for_response(response)
    try:
        return validate(response.content)
    except ValidationError as exc:
        raise ServerError(f"unexpected answer from {response.request.url.path}: {exc.errors()[0]['msg']}",
                          status=response.status_code, code="unexpected_answer",
                          request_id=response.headers.get("x-request-id")) from exc


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: _validated(response, model.model_validate_json)


def _predictions(response: httpx.Response) -> list[Prediction]:
    return _validated(response, _PREDICTIONS.validate_json)


def _health(response: httpx.Response) -> GatewayHealth:
    if response.status_code == 503:  # "unhealthy" is an answer, not an error
        try:
            return GatewayHealth.model_validate_json(response.content)
        except ValueError:
            pass
    return _model(GatewayHealth)(response)


def _job_path(job_id: str, tail: str = "") -> str:
    return f"/jobs/{quote(job_id, safe='')}{tail}"


def _prediction_path(model: str | None, route: str) -> str:
    """``/predict`` (the gateway's default model) or ``/models/<model>/predict``; likewise for batch_predict."""
    return f"/{route}" if model is None else _model_path(model, f"/{route}")


def predict(row: Row, return_probabilities: bool, model: str | None = None) -> Call[Prediction]:
    body = {"input_data": plain(row), "return_probabilities": return_probabilities}
    return Call("POST", _prediction_path(model, "predict"), _model(Prediction), json=body)


def batch_predict(rows: Iterable[Row], return_probabilities: bool, model: str | None = None) -> Call[list[Prediction]]:
    return Call("POST", _prediction_path(model, "batch_predict"), _predictions,
                json=prediction_inputs(rows, return_probabilities))


def submit_job(
    task: str, inputs: Iterable[Any] | None, options: Mapping[str, Any] | None, input_uri: str | None,
    idempotency_key: str | None, promote: bool = False, model: str | None = None,
) -> Call[JobStatus]:
    body: dict[str, Any] = {"task": task, "options": plain(options or {})}
    if model is not None:
        body["model"] = model
    if promote:
        body["promote"] = True
    if inputs is not None:
        body["inputs"] = plain(inputs if hasattr(inputs, "tolist") else list(inputs))
    if input_uri is not None:
        body["input_uri"] = input_uri
    # Always keyed: a retried POST (after a 503 or a refused connection) then returns the same job.
    headers = {IDEMPOTENCY_HEADER: idempotency_key or uuid.uuid4().hex}
    return Call("POST", "/jobs", _model(JobStatus), json=body, headers=headers)


def submit_jobs(jobs: list[Mapping[str, Any]], task: str, model: str | None = None) -> Call[JobBatch]:
    """``POST /jobs/batch``; each job is a ``POST /jobs`` body (``task``, and ``model`` when given, where it names
    none) and gets a fresh idempotency key where it has none, so a retried POST returns the same jobs."""
    defaults: dict[str, Any] = {"task": task} if model is None else {"task": task, "model": model}
    body = {"jobs": [{**defaults, **plain(dict(job)), "idempotency_key": job.get("idempotency_key")
                      or uuid.uuid4().hex} for job in jobs]}
    return Call("POST", "/jobs/batch", _model(JobBatch), json=body)


def list_jobs(status: str | None, task: str | None, model: str | None, limit: int,
              cursor: str | None) -> Call[JobPage]:
    """One page of ``GET /jobs``, newest first, with the filters given."""
    filters = {"status": status, "task": task, "model": model, "cursor": cursor}
    query = urlencode({"limit": limit, **{name: value for name, value in filters.items() if value is not None}})
    return Call("GET", f"/jobs?{query}", _model(JobPage))


def job_status(job_id: str) -> Call[JobStatus]:
    return Call("GET", _job_path(job_id), _model(JobStatus))


def job_result(job_id: str) -> Call[JobResult]:
    # A large result is a 307 to a presigned URL; httpx drops the Authorization header across origins.
    return Call("GET", _job_path(job_id, "/result"), _model(JobResult), follow_redirects=True)


def cancel_job(job_id: str) -> Call[JobStatus]:
    return Call("DELETE", _job_path(job_id), _model(JobStatus))


def retry_job(job_id: str) -> Call[JobStatus]:
    return Call("POST", _job_path(job_id, "/retry"), _model(JobStatus))


def health() -> Call[GatewayHealth]:
    return Call("GET", "/gateway/health", _health, retry=False)


def info() -> Call[GatewayInfo]:
    return Call("GET", "/gateway/info", _model(GatewayInfo))


def read_files(paths: Iterable[str | Path]) -> dict[str, bytes]:
    """A version's files by their names (no folders: a version is a flat set of files)."""
    return {Path(path).name: Path(path).read_bytes() for path in paths}


def _model_path(name: str, tail: str = "") -> str:
    return f"/models/{quote(name, safe='')}{tail}"


class _ModelList(BaseModel):
    models: list[ModelSummary]


def models() -> Call[list[ModelSummary]]:
    return Call("GET", "/models", lambda response: _model(_ModelList)(response).models)


def versions(name: str) -> Call[ModelVersions]:
    return Call("GET", _model_path(name, "/versions"), _model(ModelVersions))


def upload(name: str, files: Mapping[str, bytes]) -> Call[ModelVersion]:
    """Not retried: each upload that arrives registers a version."""
    fields = [("files", (file_name, data)) for file_name, data in files.items()]
    return Call("POST", _model_path(name, "/versions"), _manifest, files=fields, retry=False)


def _manifest(response: httpx.Response) -> ModelVersion:
    """The upload's answer is the manifest; as a ModelVersion, with the manifest kept whole."""
    def validate(content: bytes) -> ModelVersion:
        manifest = json.loads(content)
        return ModelVersion.model_validate({**manifest, "manifest": manifest})

    return _validated(response, validate)


def activate(name: str, version: str | int, traffic: int | None) -> Call[ActivationResult]:
    body = None if traffic is None else {"traffic": traffic}
    return Call("POST", _model_path(name, f"/versions/{quote(str(version), safe='')}/activate"),
                _model(ActivationResult), json=body)


def rollback(name: str) -> Call[ActivationResult]:
    """Not retried: a second rollback would go one version further back."""
    return Call("POST", _model_path(name, "/rollback"), _model(ActivationResult), retry=False)
