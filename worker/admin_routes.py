"""The worker's admin API: which model versions it holds and which of them serve.

Internal: a gateway calls these routes on its workers (it never passes them on
from clients). It registers the files a worker started with as a version
(``GET /admin/artifacts``), sends versions as tars of their files
(``PUT /admin/versions/{version}``, common/artifact_archive.py), says which
serve (``PUT /admin/serving``) and drops what it no longer needs
(``DELETE /admin/versions/{version}``). Errors are the project's envelope.

With WORKER_ADMIN_TOKEN set, every one of them takes only ``Authorization: Bearer <that token>`` (401 else): a
reachable worker port alone then loads, switches or drops nothing. Unset, they are open, as on a ``make run``
whose workers listen on loopback only.
"""

from __future__ import annotations

import asyncio
import hmac
import urllib.parse
from collections.abc import Awaitable, Callable

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from common import artifact_archive
from common.rows import validation_message
from worker.errors import InvalidInput, MalformedRequest, VersionRefused, WorkerError, WrongModel
from worker.hot_routes import read_body
from worker.responses import json_response
from worker.versions import Versions, check_label

Endpoint = Callable[[Request], Awaitable[Response]]


class ServingChange(BaseModel):
    """The body of ``PUT /admin/serving``."""

    model_config = ConfigDict(extra="forbid")

    active: str = Field(description="The version that answers the requests the canary does not take.")
    canary: str | None = Field(None, description="A second version answering a share of the requests.")
    canary_traffic: int = Field(0, ge=0, le=99, description="The canary's share of the requests, in percent.")
    loaded: bool = Field(True, description="False: the model is unloaded, predictions answer 404.")
    generation: int | None = Field(None, ge=0, description="The registry's generation of this state: one older "
                                   "than the last taken is refused (409 stale_generation).")

    @model_validator(mode="after")
    def _canary_is_another_version_with_traffic(self) -> ServingChange:
        if self.canary is not None and self.canary == self.active:
            raise ValueError("canary: must differ from active")
        if self.canary is not None and not self.canary_traffic:
            raise ValueError("canary_traffic: 1 to 99 with a canary")
        if self.canary is None and self.canary_traffic:
            raise ValueError("canary_traffic: 0 without a canary")
        return self


def authorized(request: Request, token: str | None) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <token>``; any request when ``token`` is None. Compared
    in constant time, so the answer's timing tells nothing of the token."""
    if token is None:
        return True
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


def admin_routes(model_name: str, versions: Versions, max_artifact_bytes: int, max_body_bytes: int,
                 wrap: Callable[[str, Endpoint], Endpoint], admin_token: str | None = None) -> list[BaseRoute]:
    """The ``/admin`` routes; ``wrap(route, endpoint)`` adds the worker's error envelope, request ids, metrics.

    ``max_artifact_bytes`` bounds a version's archive, ``max_body_bytes`` any other body; ``admin_token``
    (WORKER_ADMIN_TOKEN), when set, the bearer token every call must carry.
    """

    def guarded(route: str, endpoint: Endpoint) -> Endpoint:
        async def checked(request: Request) -> Response:
            if not authorized(request, admin_token):
                error = WorkerError("the worker's admin routes take its WORKER_ADMIN_TOKEN as "
                                    "'Authorization: Bearer <token>'")
                error.status_code, error.code = 401, "unauthorized"
                raise error
            return await endpoint(request)

        return wrap(route, checked)

    async def artifacts(request: Request) -> Response:
        files = await versions.start_files()
        if not files:
            error = WorkerError("the worker was started with no artifact files")
            error.status_code, error.code = 404, "not_found"
            raise error
        archive = await asyncio.to_thread(artifact_archive.pack, files)
        return Response(archive, media_type=artifact_archive.CONTENT_TYPE)

    async def put_version(request: Request) -> Response:
        label = check_label(request.path_params["version"])
        sent = request.headers.get("x-model-name")
        if sent is None or urllib.parse.unquote(sent) != model_name:
            raise WrongModel(f"this worker serves model {model_name!r}, the version was sent for "
                             f"{'no model (X-Model-Name is missing)' if sent is None else repr(sent)}")
        body = await read_body(request.receive, request.headers.get("content-length"), max_artifact_bytes)
        try:
            files = await asyncio.to_thread(artifact_archive.unpack, body, max_artifact_bytes)
        except artifact_archive.ArchiveError as exc:
            raise VersionRefused(f"version {label} refused: model {model_name!r}: archive: {exc}") from None
        return json_response(await versions.load(label, files))

    async def put_serving(request: Request) -> Response:
        try:
            body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
            change = ServingChange.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest(f"body is not valid JSON: {exc}") from None
        except ValidationError as exc:
            raise InvalidInput(validation_message(exc)) from None
        served = versions.serve(change.active, change.canary, change.canary_traffic, change.loaded, change.generation)
        return json_response(served)

    async def delete_version(request: Request) -> Response:
        label = request.path_params["version"]
        return json_response({"version": label, "unloaded": versions.unload(label)})

    return [
        Route("/admin/artifacts", guarded("/admin/artifacts", artifacts)),
        Route("/admin/versions/{version}", guarded("/admin/versions/{version}", put_version), methods=["PUT"]),
        Route("/admin/versions/{version}", guarded("/admin/versions/{version}", delete_version), methods=["DELETE"]),
        Route("/admin/serving", guarded("/admin/serving", put_serving), methods=["PUT"]),
    ]
