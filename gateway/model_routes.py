"""The model routes: versions, uploads, activation, rollback, and the Open Inference Protocol's model repository.

    GET  /models                                     every model: what serves, how many versions, its pool
                                                     (workers, healthy) and which is the default
    GET  /models/ui                                  a page of them (gateway/models_ui.html); open, it holds no data
    GET  /models/{name}/versions                     its versions (manifests), serving state, history, workers
    POST /models/{name}/versions                     upload (multipart/form-data, ``files`` fields): 201 once a
                                                     worker checked it and the registry holds it; 422 with the reason
    POST /models/{name}/versions/{version}/activate  full switch, or ``{"traffic": 1..99}``: a canary
    POST /models/{name}/rollback                     back to the version active before
    GET  /v2                                         a worker's server metadata, with the model_repository extension
    POST /v2/repository/index                        every model and version, READY or UNAVAILABLE
    POST /v2/repository/models/{name}/load|unload    as Triton's repository API

Uploading, activating, rolling back, loading and unloading need an admin key
when API keys are on (403 otherwise); listing needs any valid key. Errors are
the project's envelope, and on ``/v2`` the protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Message

from common.artifact_archive import ArchiveError, pack
from gateway.activation import Activation
from gateway.auth import is_admin
from gateway.backends import BackendPool
from gateway.docs import ERROR_TEXT, OpenAPIBuilder
from gateway.errors import GatewayError, MalformedRequest, NoWorkerAvailable, UnknownModel
from gateway.job_routes import page_headers
from gateway.protocol import PREFIX, is_protocol_path, protocol_body
from gateway.request_body import read_body
from jobs.errors import InvalidVersion, JobError
from jobs.registry import Activation as ActivationRecord
from jobs.registry import Manifest, VersionInfo, check_file_name, check_model_name

log = logging.getLogger(__name__)
UI_PAGE = Path(__file__).with_name("models_ui.html")
#: Most ``files`` fields in one upload.
MAX_UPLOAD_FILES = 1000
REPOSITORY_EXTENSION = "model_repository"


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"


class VersionRefused(GatewayError):
    status_code = 422
    code = "version_refused"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _require_admin(request: Request) -> None:
    if not is_admin(request.scope):
        raise Forbidden("changing model versions needs an admin key (ADMIN_API_KEYS)")


def _by_key(request: Request) -> str | None:
    return request.scope["state"].get("key_id")


async def _traffic(request: Request) -> int | None:
    """The activate body's optional ``traffic``: None or 100 a full switch, 1..99 a canary."""
    body = await read_body(request.scope, request.receive, 4096)
    if not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedRequest("the body is not JSON: send nothing, or {\"traffic\": 1..100}") from None
    if not isinstance(parsed, dict) or set(parsed) - {"traffic"}:
        raise InvalidVersion("the body takes one field, traffic: {\"traffic\": 1..100}")
    traffic = parsed.get("traffic")
    if traffic is not None and (type(traffic) is not int or not 1 <= traffic <= 100):
        raise InvalidVersion(f"traffic: a whole percent from 1 to 100 (got {traffic!r}); 100 is a full switch")
    return traffic


def model_routes(activation: Activation, pool: BackendPool, max_artifact_bytes: int, timeout_s: float,
                 retry_after_s: int) -> list[Route]:
    registry = activation.registry

    def handler(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            protocol = is_protocol_path(request.url.path)
            try:
                return await fn(request)
            except (JobError, GatewayError) as exc:
                retry_after = {"Retry-After": str(retry_after_s)} if exc.status_code == 503 else None
                if protocol:
                    return protocol_body(exc.status_code, exc.message, retry_after)
                body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message},
                                        "request_id": request.scope["state"].get("request_id")}
                if hasattr(exc, "workers"):
                    body["workers"] = exc.workers
                if getattr(exc, "models", None) is not None:
                    body["error"]["models"] = exc.models
                return _json(body, exc.status_code, retry_after)
            except Exception:
                log.exception("model route %s failed", request.url.path)
                if protocol:
                    return protocol_body(500, "unexpected error, see the gateway log")
                return _json({"error": {"code": "internal_error", "message": "unexpected error, see the gateway log"},
                              "request_id": request.scope["state"].get("request_id")}, 500)

        return endpoint

    def served_names() -> set[str]:
        return {backend.model_name for backend in pool.backends if backend.healthy and backend.model_name}

    def workers_of(model_name: str) -> list[dict[str, Any]]:
        return [{"worker": backend.url, "state": backend.state.value, "in_rotation": backend.in_rotation,
                 "serving": backend.serving} for backend in pool.backends if backend.model_name == model_name]

    async def summary(model_name: str) -> dict[str, Any]:
        state = await registry.serving(model_name)
        versions = await registry.versions(model_name)
        return {"name": model_name, "active": state.active if state else None,
                "canary": state.canary if state else None, "canary_traffic": state.canary_traffic if state else 0,
                "loaded": state.loaded if state else None, "versions": len(versions),
                "newest": versions[-1].version if versions else None, "workers": len(pool.pool(model_name)),
                "healthy": pool.summary(model_name)[0], "default": model_name == pool.default_model()}

    async def list_models(request: Request) -> Response:
        names = sorted(set(await registry.models()) | served_names())
        return _json({"models": [await summary(name) for name in names]})

    async def model_versions(request: Request) -> Response:
        name = request.path_params["name"]
        versions = await registry.versions(name)
        if not versions and name not in served_names():
            raise UnknownModel(f"no model {name!r}: no versions, and no worker serves it", pool.models())
        state = await registry.serving(name)
        history = await registry.history(name)
        return _json({
            "model_name": name, "active": state.active if state else None, "canary": state.canary if state else None,
            "canary_traffic": state.canary_traffic if state else 0, "loaded": state.loaded if state else None,
            "generation": state.generation if state else 0,
            "versions": [info.model_dump(mode="json") for info in versions],
            "history": [change.model_dump(mode="json") for change in history],
            "workers": workers_of(name),
        })

    async def upload_files(request: Request) -> dict[str, bytes]:
        """The ``files`` fields of a multipart body, by file name, within MODEL_MAX_ARTIFACT_BYTES."""
        body = await read_body(request.scope, request.receive, max_artifact_bytes)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES,
                                                             max_part_size=max_artifact_bytes)
        except MultiPartException as exc:
            raise InvalidVersion(f"the body is not multipart/form-data with files fields: {exc}") from None
        files: dict[str, bytes] = {}
        try:
            for field in form.getlist("files"):
                if not isinstance(field, UploadFile) or field.filename is None:
                    raise InvalidVersion("each files field must be a file (with a file name), not a text value")
                name = check_file_name(field.filename)
                if name in files:
                    raise InvalidVersion(f"file name {name!r} is sent twice")
                files[name] = await field.read()
        finally:
            await form.close()
        if not files:
            raise InvalidVersion("an upload needs at least one files field (multipart/form-data)")
        return files

    async def upload(request: Request) -> Response:
        _require_admin(request)
        name = check_model_name(request.path_params["name"])
        files = await upload_files(request)
        checkers = [backend for backend in activation.workers(name) if backend.in_rotation] or activation.workers(name)
        if not checkers:
            if await registry.versions(name):
                raise NoWorkerAvailable(f"no healthy worker serves model {name!r} to check the version on")
            raise UnknownModel(f"no worker serves model {name!r}: a version is checked on one before it is kept")
        checker = checkers[0]
        try:
            archive = pack(files)
        except ArchiveError as exc:
            raise InvalidVersion(str(exc)) from None
        label = f"check-{uuid.uuid4().hex[:12]}"
        try:
            await activation.admin.load(checker.url, name, label, archive, timeout_s)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in (409, 413, 422):
                raise VersionRefused(f"worker {checker.url} refused the version, nothing was registered: "
                                     f"{exc}") from None
            raise NoWorkerAvailable(f"worker {checker.url} could not check the version: {exc}") from None
        except httpx.HTTPError as exc:
            raise NoWorkerAvailable(f"worker {checker.url} could not check the version: "
                                    f"{type(exc).__name__}: {exc}") from None
        finally:
            try:
                await activation.admin.drop(checker.url, label, timeout_s)
            except httpx.HTTPError as exc:  # its next change drops it
                log.info("worker %s kept the checked copy %s: %s", checker.url, label, exc)
        metadata = checker.metadata or {}
        manifest = await registry.register(name, files, source="upload", inputs=metadata.get("inputs"),
                                           outputs=metadata.get("outputs"))
        assert manifest is not None  # only a first-start registration may find another process first
        log.info("model %s: version %s uploaded (%d files)", name, manifest.version, len(files))
        return _json(manifest.model_dump(mode="json"), 201, {"Location": f"/models/{name}/versions"})

    async def activate(request: Request) -> Response:
        _require_admin(request)
        traffic = await _traffic(request)
        result = await activation.activate(request.path_params["name"], request.path_params["version"], traffic,
                                           _by_key(request))
        return _json(result)

    async def rollback(request: Request) -> Response:
        _require_admin(request)
        return _json(await activation.rollback(request.path_params["name"], _by_key(request)))

    page = UI_PAGE.read_bytes()
    headers = page_headers(page)

    async def ui(request: Request) -> Response:
        return HTMLResponse(page, headers=headers)

    async def server_metadata(request: Request) -> Response:
        backends = [backend for backend in pool.backends if backend.in_rotation]
        if not backends:
            raise NoWorkerAvailable("no healthy worker; try again shortly")
        try:
            response = await activation.admin.client.get(f"{backends[0].url}{PREFIX}", timeout=timeout_s)
            metadata = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise NoWorkerAvailable(f"worker {backends[0].url} did not answer: {exc}") from None
        extensions = [name for name in metadata.get("extensions", []) if name != REPOSITORY_EXTENSION]
        return _json({**metadata, "extensions": [*extensions, REPOSITORY_EXTENSION]})

    async def repository_index(request: Request) -> Response:
        body = await read_body(request.scope, request.receive, 4096)
        try:
            ready_only = bool(orjson.loads(body).get("ready", False)) if body.strip() else False
        except (orjson.JSONDecodeError, AttributeError):
            raise MalformedRequest("the body is a JSON object: {} or {\"ready\": true}") from None
        index = []
        for name in await registry.models():
            state = await registry.serving(name)
            for info in await registry.versions(name):
                serving = state is not None and info.version in (state.active, state.canary)
                if serving and state is not None and state.loaded:
                    entry = {"name": name, "version": info.version, "state": "READY", "reason": ""}
                else:
                    reason = "unloaded" if serving else "not active"
                    entry = {"name": name, "version": info.version, "state": "UNAVAILABLE", "reason": reason}
                if entry["state"] == "READY" or not ready_only:
                    index.append(entry)
        return _json(index)

    async def repository_load(request: Request) -> Response:
        _require_admin(request)
        await read_body(request.scope, request.receive, 1024 * 1024)  # Triton's parameters: none apply here
        return _json(await activation.load(request.path_params["name"], _by_key(request)))

    async def repository_unload(request: Request) -> Response:
        _require_admin(request)
        await read_body(request.scope, request.receive, 1024 * 1024)
        return _json(await activation.unload(request.path_params["name"], _by_key(request)))

    return [
        Route("/models", handler(list_models), methods=["GET"]),
        Route("/models/ui", ui, methods=["GET"]),
        Route("/models/{name}/versions", handler(model_versions), methods=["GET"]),
        Route("/models/{name}/versions", handler(upload), methods=["POST"]),
        Route("/models/{name}/versions/{version}/activate", handler(activate), methods=["POST"]),
        Route("/models/{name}/rollback", handler(rollback), methods=["POST"]),
        Route(PREFIX, handler(server_metadata), methods=["GET"]),
        Route(f"{PREFIX}/repository/index", handler(repository_index), methods=["POST"]),
        Route(f"{PREFIX}/repository/models/{{name}}/load", handler(repository_load), methods=["POST"]),
        Route(f"{PREFIX}/repository/models/{{name}}/unload", handler(repository_unload), methods=["POST"]),
    ]


class VersionList(BaseModel):
    model_name: str
    active: str | None = Field(description="The version that serves (null before the first activation).")
    canary: str | None = Field(description="A version that gets canary_traffic percent of the requests, or null.")
    canary_traffic: int
    loaded: bool | None = Field(description="False after an unload: the model answers nothing.")
    generation: int = Field(description="Bumped by every change.")
    versions: list[VersionInfo] = Field(description="Oldest first, each with its manifest.")
    history: list[ActivationRecord] = Field(description="Every change, newest first.")
    workers: list[dict[str, Any]] = Field(description="The workers of the model and the versions each serves.")


class ActivationAnswer(BaseModel):
    model_name: str
    active: str
    canary: str | None
    canary_traffic: int
    loaded: bool
    generation: int
    workers: list[dict[str, Any]] = Field(description="Per worker: ok, compilations, load_ms, error.")
    took_ms: float = Field(description="From the call to every worker serving the new state.")


def models_openapi(builder: OpenAPIBuilder) -> None:
    """The model routes and the protocol's repository extension."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    change = builder.responses(ActivationAnswer, 403, 404, 409, 422, 503)
    change["422"]["description"] = "A worker refused the version (activation_failed, with workers): nothing changed"
    change["409"]["description"] = "Another change got there first, or the change makes no sense in this state"
    builder.add("/models", "get", {
        "summary": "Every model: its active version, canary and number of versions", "tags": ["models"],
        "responses": builder.responses({"type": "object"}, 503),
    })
    builder.add("/models/ui", "get", {
        "summary": "A page of every model's versions and which serves", "tags": ["models"],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    })
    builder.add("/models/{name}/versions", "get", {
        "summary": "A model's versions with their manifests, what serves, the history of changes", "tags": ["models"],
        "parameters": [name], "responses": builder.responses(VersionList, 404, 503),
    })
    builder.add("/models/{name}/versions", "post", {
        "summary": "Upload a version (files fields); a worker checks it first: 201, or 422 with the reason",
        "tags": ["models"], "parameters": [name],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string",
                                                                                  "format": "binary"}}}}}}},
        "responses": builder.responses(Manifest, 403, 404, 413, 422, 503, ok_status=201),
    })
    builder.add("/models/{name}/versions/{version}/activate", "post", {
        "summary": "Serve this version on every worker (hot, no failed request); {\"traffic\": 1..99}: a canary",
        "tags": ["models"], "parameters": [name, version],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"traffic": {"type": "integer", "minimum": 1, "maximum": 100}}},
            "example": {"traffic": 10}}}},
        "responses": change,
    })
    builder.add("/models/{name}/rollback", "post", {
        "summary": "Serve the version that was active before the current one", "tags": ["models"],
        "parameters": [name], "responses": change,
    })
    protocol_error = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
    index_entry = {"type": "object", "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]}, "reason": {"type": "string"}}}
    builder.add(f"{PREFIX}/repository/index", "post", {
        "summary": "Every model and version with its state (Open Inference Protocol model repository)",
        "tags": ["protocol"],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
            "type": "array", "items": index_entry}}}},
            "400": {"description": "The body is not a JSON object", "content": protocol_error},
            "503": {"description": "The registry did not answer", "content": protocol_error}},
    })
    for verb, text in (("load", "Serve the model again (its newest version if none was active)"),
                       ("unload", "Stop serving the model: its predictions answer 404 until it is loaded")):
        builder.add(f"{PREFIX}/repository/models/{{name}}/{verb}", "post", {
            "summary": text, "tags": ["protocol"], "parameters": [name],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                "type": "object"}}}}, **{str(status): {"description": ERROR_TEXT[status], "content": protocol_error}
                                        for status in (400, 403, 404, 409, 413, 422, 503)}},
        })
