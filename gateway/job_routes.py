"""The job routes of the gateway, and their part of the OpenAPI document.

The gateway only submits, reads, cancels and retries (``jobs.service``); sidecars run jobs.

    POST   /jobs               202 + Location once the job is stored and queued
    POST   /jobs/batch         202 + the ids of many jobs, in order, once all are stored and queued
    GET    /jobs               the newest jobs, filtered, a page at a time (keyset cursor)
    GET    /jobs/ui            a page to watch them (gateway/jobs_ui.html); open without a key, it holds no data
    GET    /jobs/{id}          its status
    GET    /jobs/{id}/result   the result; 409 until it succeeded (?wait=s: wait for it); a redirect when large (S3)
    DELETE /jobs/{id}          cancel: 200 if cancelled, 202 if it stops at its next chunk
    POST   /jobs/{id}/retry    run a failed job again, same id: 202 once it is queued; 409 unless failed

With API keys, a job belongs to the key that submitted it (``owner``, the key's
id): any other key gets 404 for it, as if it did not exist.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.docs import OpenAPIBuilder
from gateway.errors import GatewayError, PayloadTooLarge, error_response
from gateway.request_body import read_body
from jobs.errors import InvalidJob, JobError, JobTooLarge
from jobs.schema import BatchedJob, JobBatchAccepted, JobState, JobStatus, JobSubmission
from jobs.service import JobService

log = logging.getLogger(__name__)
IDEMPOTENCY_HEADER = "idempotency-key"
LIST_FILTERS = ("status", "task", "model", "limit", "cursor")
DEFAULT_LIMIT = 50
UI_PAGE = Path(__file__).with_name("jobs_ui.html")
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


class JobResult(BaseModel):
    job_id: str
    task: str
    model_name: str | None = Field(None, description="The model that computed the output.")
    model_version: str | None = Field(
        None, description='Its version; several, ascending and comma-separated (e.g. "3,4"), when rows came '
        "from several.")
    output: Any


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as cursor= for the next page; null on the last one.")


def _list_arguments(request: Request, max_limit: int) -> dict[str, Any]:
    """GET /jobs's query, checked: 422 naming the bad parameter."""
    query = request.query_params
    unknown = sorted(set(query) - set(LIST_FILTERS))
    if unknown:
        raise InvalidJob(f"{unknown[0]}: unknown parameter; known: {', '.join(LIST_FILTERS)}")
    arguments: dict[str, Any] = {name: query.get(name) or None for name in ("status", "task", "model", "cursor")}
    if arguments["status"] is not None and arguments["status"] not in get_args(JobState):
        raise InvalidJob(f"status: one of {', '.join(get_args(JobState))}")
    limit = query.get("limit") or str(DEFAULT_LIMIT)
    if not limit.isdigit() or not 1 <= int(limit) <= max_limit:
        raise InvalidJob(f"limit: a whole number from 1 to {max_limit}")
    arguments["limit"] = int(limit)
    return arguments


def _wait_s(request: Request) -> float:
    """GET /jobs/<id>/result's wait=: seconds, 0 (the default) to answer at once."""
    raw = request.query_params.get("wait", "0")
    try:
        wait_s = float(raw)
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s < float("inf"):
        raise InvalidJob(f"wait: seconds, a number from 0 (got {raw!r}); waits longer than "
                         "JOB_RESULT_MAX_WAIT_S are cut to it")
    return wait_s


def _json(status: JobStatus, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(status.model_dump_json(), status_code, headers, media_type="application/json")


def _owner(request: Request) -> str | None:
    """The id of the request's API key (gateway/auth.py); None when access control is off."""
    return request.scope["state"].get("key_id")


def page_headers(page: bytes) -> dict[str, str]:
    """Only the page's own inline script and style run, and it talks only to this origin.

    The page holds an API key (in sessionStorage): injected code or a framing
    page must not get at it, so the policy lists the inline blocks by hash.
    """
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, text in _INLINE.findall(page):
        hashes[tag.decode()].append(f"'sha256-{base64.b64encode(hashlib.sha256(text).digest()).decode()}'")
    policy = (f"default-src 'none'; script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Cache-Control": "no-cache", "Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}


def job_routes(service: JobService, retry_after_s: int) -> list[Route]:
    def handler(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except (JobError, GatewayError) as exc:
                # A 503 (the broker, the store or the database did not answer) is worth a retry.
                retry_after = retry_after_s if exc.status_code == 503 else None
                return error_response(exc.status_code, exc.code, exc.message, request.scope["state"].get("request_id"),
                                      retry_after)
            except Exception:
                log.exception("job route %s failed", request.url.path)
                return error_response(500, "internal_error", "unexpected error, see the gateway log",
                                      request.scope["state"].get("request_id"))

        return endpoint

    async def read_job_body(request: Request, limit: int | None = None) -> bytes:
        try:
            return await read_body(request.scope, request.receive, limit or service.settings.job_max_inline_bytes)
        except PayloadTooLarge as exc:
            raise JobTooLarge(f"{exc.message}: put the rows in the store and send input_uri") from None

    async def submit(request: Request) -> Response:
        submitted = await service.submit(await read_job_body(request), request.headers.get(IDEMPOTENCY_HEADER),
                                         owner=_owner(request))
        headers = {"Location": submitted.status.status_url}
        if submitted.replayed:
            headers["Idempotent-Replayed"] = "true"
        return _json(submitted.status, 202, headers)

    async def submit_batch(request: Request) -> Response:
        body = await read_job_body(request, service.settings.job_batch_max_bytes)
        submitted = await service.submit_many(body, owner=_owner(request))
        accepted = JobBatchAccepted(job_ids=[one.status.job_id for one in submitted],
                                    replayed=[one.replayed for one in submitted])
        return Response(accepted.model_dump_json(), 202, media_type="application/json")

    async def list_jobs(request: Request) -> Response:
        arguments = _list_arguments(request, service.settings.job_list_max_limit)
        jobs, cursor = await service.list(**arguments, owner=_owner(request))  # with API keys: the key's own jobs
        return Response(JobList(jobs=jobs, next_cursor=cursor).model_dump_json(), media_type="application/json")

    page = UI_PAGE.read_bytes()
    headers = page_headers(page)

    async def ui(request: Request) -> Response:
        return HTMLResponse(page, headers=headers)

    async def status(request: Request) -> Response:
        return _json(await service.status(request.path_params["job_id"], _owner(request)), 200)

    async def result(request: Request) -> Response:
        answer = await service.result(request.path_params["job_id"], _owner(request), _wait_s(request))
        if isinstance(answer, str):
            return RedirectResponse(answer, 307)
        return Response(answer, media_type="application/json")

    async def cancel(request: Request) -> Response:
        status = await service.cancel(request.path_params["job_id"], _owner(request))
        return _json(status, 200 if status.status == "cancelled" else 202)

    async def retry(request: Request) -> Response:
        status = await service.retry(request.path_params["job_id"], _owner(request))
        return _json(status, 202, {"Location": status.status_url})

    return [
        Route("/jobs", handler(submit), methods=["POST"]),
        Route("/jobs", handler(list_jobs), methods=["GET"]),
        Route("/jobs/batch", handler(submit_batch), methods=["POST"]),
        Route("/jobs/ui", ui, methods=["GET"]),
        Route("/jobs/{job_id}", handler(status), methods=["GET"]),
        Route("/jobs/{job_id}", handler(cancel), methods=["DELETE"]),
        Route("/jobs/{job_id}/result", handler(result), methods=["GET"]),
        Route("/jobs/{job_id}/retry", handler(retry), methods=["POST"]),
    ]


def jobs_openapi(builder: OpenAPIBuilder, model: dict[str, Any] | None) -> None:
    """The job routes; the example job carries the served model's example row."""
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    example = None if model is None else {"task": "batch_predict", "inputs": [model["example"]]}
    builder.add("/jobs", "post", {
        "summary": "Submit a job; 202 once it is stored and queued",
        "tags": ["jobs"],
        "parameters": [{
            "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "A retry with the same key and body returns the same job, a failed one included "
                           "(run that again with POST /jobs/{job_id}/retry).",
        }],
        "requestBody": builder.json_body(builder.schema(JobSubmission), example),
        "responses": builder.responses(JobStatus, 400, 413, 422, 503, ok_status=202),
    })
    batch_example = None if example is None else {"jobs": [example, {**example, "idempotency_key": "row-2"}]}
    builder.add("/jobs/batch", "post", {
        "summary": "Submit many jobs at once; 202 with their ids in order once all are stored and queued",
        "description": "Each job is a POST /jobs body with an optional idempotency_key (as that route's header). "
                       "All are checked first: a bad one is 422 naming its index (jobs[i]), with nothing stored. "
                       "At most JOB_BATCH_MAX jobs.",
        "tags": ["jobs"],
        "requestBody": builder.json_body({"type": "object", "required": ["jobs"], "additionalProperties": False,
                                          "properties": {"jobs": {"type": "array", "minItems": 1,
                                                                  "items": builder.schema(BatchedJob)}}},
                                         batch_example),
        "responses": builder.responses(JobBatchAccepted, 400, 413, 422, 503, ok_status=202),
    })
    filters = [
        ("status", "Only jobs in this state.", {"type": "string", "enum": list(get_args(JobState))}),
        ("task", "Only jobs of this task type.", {"type": "string"}),
        ("model", "Only jobs accepted for this model name.", {"type": "string"}),
        ("limit", f"Jobs per page (default {DEFAULT_LIMIT}, at most JOB_LIST_MAX_LIMIT).",
         {"type": "integer", "minimum": 1}),
        ("cursor", "next_cursor of the previous page.", {"type": "string"}),
    ]
    builder.add("/jobs", "get", {
        "summary": "The newest jobs first, filtered, a page at a time; watch them on /jobs/ui",
        "description": "Keyset pagination: follow next_cursor until it is null. "
                       "A page for people: [/jobs/ui](/jobs/ui).",
        "tags": ["jobs"],
        "parameters": [{"name": name, "in": "query", "required": False, "description": text, "schema": schema}
                       for name, text, schema in filters],
        "responses": builder.responses(JobList, 422, 503),
    })
    builder.add("/jobs/ui", "get", {
        "summary": "A page listing recent jobs, refreshing by itself, with cancel and retry buttons",
        "description": "Open without an API key: the page holds no data. With API keys it asks for one, keeps it "
                       "in the tab's sessionStorage and sends it as Authorization: Bearer on its calls to the "
                       "job routes, which stay protected and show each key only its own jobs.",
        "tags": ["jobs"],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    })
    builder.add("/jobs/{job_id}", "get", {
        "summary": "A job's status: queued, running, succeeded, failed, cancelled or expired, with progress",
        "tags": ["jobs"],
        "parameters": [job_id],
        "description": "404 also for a finished job deleted after JOB_RETENTION_S.",
        "responses": builder.responses(JobStatus, 404, 503),
    })
    builder.add("/jobs/{job_id}", "delete", {
        "summary": "Cancel a job: 200 when cancelled, 202 when it stops at its next chunk",
        "tags": ["jobs"],
        "parameters": [job_id],
        "responses": builder.responses(JobStatus, 404, 409, 503),
    })
    retried = builder.responses(JobStatus, 404, 409, 503, ok_status=202)
    retried["409"] = {**retried["409"], "description": "The job is not failed (job_not_failed)"}
    builder.add("/jobs/{job_id}/retry", "post", {
        "summary": "Run a failed job again under its id; 202 once it is queued, 409 unless it failed",
        "description": "The job is queued again as a fresh run (attempts from 0, progress and error cleared); "
                       "its failed run is kept in earlier_runs. Only a failed job: a cancelled one was stopped "
                       "on purpose. Of two retries at once, one is queued and the other is 409.",
        "tags": ["jobs"],
        "parameters": [job_id],
        "responses": retried,
    })
    result = builder.responses(JobResult, 404, 409, 422, 503)
    result["307"] = {"description": "A large result: fetch it from the presigned URL in Location"}
    wait = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0, "default": 0},
            "description": "Seconds to wait for the job to finish before answering (cut to JOB_RESULT_MAX_WAIT_S): "
                           "one request instead of polling its status."}
    builder.add("/jobs/{job_id}/result", "get", {
        "summary": "A succeeded job's result (rows in input order); 409 before; wait= waits for it",
        "tags": ["jobs"],
        "parameters": [job_id, wait],
        "responses": result,
    })
