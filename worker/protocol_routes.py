"""The worker's Open Inference Protocol (KServe V2 REST) routes.

Infer requests go through the same batcher as ``/predict``; the answer is the
model's output tensors. Errors on these routes are the protocol's
``{"error": "..."}`` body (a client of the protocol reads that key), with the
status the project gives the same failure elsewhere (400 for a bad request,
404 for another model, 413, 503 with Retry-After, 500).

``/v2/models/{name}/versions/{version}/...`` is served by that version while it
is loaded as the active version or the canary, and is 404 otherwise; without a
version, a request goes to the canary with its traffic share, else to the active
version. Every answer's ``model_version`` is the version that computed it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from common.model_headers import model_headers
from worker.contract import Model
from worker.errors import WorkerError
from worker.metrics import WorkerMetrics
from worker.predictor import Predictor
from worker.protocol import HEADER_LENGTH, ProtocolCodec, ProtocolError
from worker.responses import json_response, protocol_error
from worker.versions import LoadedVersion, Versions

log = logging.getLogger(__name__)
SERVER_NAME = "jax-inference-worker"
DISTRIBUTION = "jax-inference-gateway"
EXTENSIONS = ["binary_tensor_data"]
Endpoint = Callable[[Request], Awaitable[Response]]


class State(Protocol):
    """What the routes need of the worker's serving state."""

    metadata: dict[str, Any] | None
    versions: Versions

    def require_ready(self) -> Predictor: ...


def _errors_as_protocol(fn: Endpoint) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ProtocolError as exc:
            return protocol_error(exc.message, exc.status_code)
        except WorkerError as exc:
            return protocol_error(exc.message, exc.status_code)
        except Exception:
            log.exception("unexpected error on %s", request.url.path)
            return protocol_error("unexpected error, see the worker log", 500)

    return endpoint


def _server_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def protocol_routes(
    model: Model, state: State, read_body: Callable[[Request], Awaitable[bytes]], max_rows: int,
    wrap: Callable[[str, Endpoint], Endpoint], metrics: WorkerMetrics,
) -> list[BaseRoute]:
    """The ``/v2`` routes; ``wrap(route, endpoint)`` adds the worker's request ids and metrics."""
    server = {"name": SERVER_NAME, "version": _server_version(), "extensions": EXTENSIONS}
    codec: ProtocolCodec | None = None

    def check_model(request: Request) -> LoadedVersion:
        """The version that answers the request (the one it names, else the canary's share or the active)."""
        name, wanted = request.path_params["name"], request.path_params.get("version")
        if name != model.name:
            served = f"{model.name} version {' and '.join(state.versions.serving)}"
            asked = name if wanted is None else f"{name} version {wanted}"
            raise ProtocolError(f"unknown model {asked}; this server serves {served}", 404)
        state.require_ready()
        return state.versions.choose() if wanted is None else state.versions.named(wanted)

    async def server_metadata(request: Request) -> Response:
        return json_response(server)

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = state.metadata is not None
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    async def model_metadata(request: Request) -> Response:
        check_model(request)
        metadata = state.metadata or {}
        keys = ("name", "datatype", "shape")
        return json_response({
            "name": metadata["name"],
            "versions": state.versions.serving,
            "platform": metadata["platform"],
            "inputs": [{key: tensor[key] for key in keys} for tensor in metadata["inputs"]],
            "outputs": [{key: tensor[key] for key in keys} for tensor in metadata["outputs"]],
        })

    async def model_ready(request: Request) -> Response:
        check_model(request)
        return json_response({"name": model.name, "ready": True})

    async def infer(request: Request) -> Response:
        check_model(request)
        nonlocal codec
        predictor = state.require_ready()
        if codec is None:  # the outputs are known once the model is ready
            codec = ProtocolCodec(model, predictor.outputs, max_rows)
        infer_request = codec.decode(await read_body(request), request.headers.get(HEADER_LENGTH))
        # Chosen again with nothing awaited before the rows are queued: a version unloaded meanwhile is not used.
        version = check_model(request)
        outputs = await predictor.batcher.submit(infer_request.rows, version.target)
        body, headers = codec.encode(infer_request, outputs, version.label)
        metrics.predictions.labels("/v2/models/{name}/infer", version.label).inc()
        return Response(body, headers={**headers, **model_headers(model.name, version.label)})

    def route(path: str, fn: Endpoint, methods: list[str] | None = None) -> Route:
        return Route(path, wrap(path, _errors_as_protocol(fn)), methods=methods)

    model_paths = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
    return [
        route("/v2", server_metadata),
        route("/v2/health/live", live),
        route("/v2/health/ready", ready),
        *(route(path, model_metadata) for path in model_paths),
        *(route(f"{path}/ready", model_ready) for path in model_paths),
        *(route(f"{path}/infer", infer, ["POST"]) for path in model_paths),
    ]
