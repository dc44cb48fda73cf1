"""The activation fan-out against fake workers (their admin API, in process) and a real registry on SQLite.

All workers load -> commit -> switch; one refuses or stays silent -> nothing changes anywhere and the answer
says which worker and why; two changes at once are serialised in a gateway and one of two gateways gets 409;
a store or database failure during a change leaves every worker on the old version.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.artifact_archive import pack, unpack
from gateway.activation import Activation, ActivationFailed, ChangeRefused, Target, WorkerAdmin
from gateway.backends import BackendPool
from jobs.database import create_database
from jobs.errors import ActivationConflict, JobsUnavailable
from jobs.registry import Registry
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore

MODEL = "m"
START_FILES = {"params.npz": b"start params"}


class FakeWorker:
    """A worker's admin API and /health as the design fixes them, holding versions in a dict."""

    def __init__(self, name: str, start_label: str = "7") -> None:
        self.url = f"http://{name}"
        self.serving: dict[str, Any] = {"active": start_label, "canary": None, "canary_traffic": 0, "loaded": True,
                                        "origin": "start"}
        self.loaded: dict[str, dict[str, bytes]] = {}
        self.refuse: str | None = None  # a reason: every load is refused with it
        self.delay_s = 0.0
        self.serve_calls = 0
        self.switched = asyncio.Event()
        self.app = Starlette(routes=[
            Route("/health", self._health),
            Route("/metadata", self._metadata),
            Route("/v2", self._server_metadata),
            Route("/admin/artifacts", self._artifacts),
            Route("/admin/versions/{version}", self._load, methods=["PUT"]),
            Route("/admin/versions/{version}", self._drop, methods=["DELETE"]),
            Route("/admin/serving", self._serve, methods=["PUT"]),
        ])

    def health(self) -> dict[str, Any]:
        return {"status": "healthy", "model_name": MODEL, "model_version": self.serving["active"],
                "serving": dict(self.serving)}

    async def _health(self, request: Request) -> Response:
        return JSONResponse(self.health())

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse({"name": MODEL, "version": self.serving["active"], "example": [1.0],
                             "inputs": [{"name": "input", "shape": [-1, 1], "datatype": "FP32"}],
                             "outputs": [{"name": "y", "shape": [-1, 1], "datatype": "FP32"}]})

    async def _server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "fake", "version": "0", "extensions": ["binary_tensor_data"]})

    async def _artifacts(self, request: Request) -> Response:
        return Response(pack(START_FILES), media_type="application/x-tar")

    async def _load(self, request: Request) -> Response:
        await asyncio.sleep(self.delay_s)
        version = request.path_params["version"]
        if request.headers.get("x-model-name") != MODEL:
            return JSONResponse({"error": {"code": "wrong_model", "message": "not my model"}}, 409)
        if self.refuse:
            return JSONResponse({"error": {"code": "version_refused", "message": self.refuse}}, 422)
        self.loaded[version] = unpack(await request.body(), 1 << 20)
        return JSONResponse({"version": version, "compilations": 0, "load_ms": 1.5})

    async def _drop(self, request: Request) -> Response:
        version = request.path_params["version"]
        if version in (self.serving["active"], self.serving["canary"]) and self.serving["origin"] == "registry":
            return JSONResponse({"error": {"code": "version_in_use", "message": "serving it"}}, 409)
        self.loaded.pop(version, None)
        return JSONResponse({"dropped": version})

    async def _serve(self, request: Request) -> Response:
        self.serve_calls += 1
        state = await request.json()
        newest = self.serving.get("generation")
        if state.get("generation") is not None and newest is not None and state["generation"] < newest:
            return JSONResponse({"error": {"code": "stale_generation", "message": "older than served"}}, 409)
        missing = [v for v in (state["active"], state["canary"]) if v and state["loaded"] and v not in self.loaded]
        if missing:
            return JSONResponse({"error": {"code": "version_not_loaded", "message": f"{missing} not loaded"}}, 409)
        self.serving = {**state, "origin": "registry"}
        self.loaded = {v: files for v, files in self.loaded.items() if v in (state["active"], state["canary"])}
        self.switched.set()
        return JSONResponse(dict(self.serving))


class Workers:
    """Fake workers behind one httpx transport, dispatched by host."""

    def __init__(self, *names: str) -> None:
        self.by_url = {f"http://{name}": FakeWorker(name) for name in names}
        transports = {url: httpx.ASGITransport(app=worker.app) for url, worker in self.by_url.items()}

        async def dispatch(request: httpx.Request) -> httpx.Response:
            transport = transports[f"http://{request.url.host}"]
            response = await transport.handle_async_request(request)
            await response.aread()
            return response

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(dispatch))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.by_url.values())

    def pool(self) -> BackendPool:
        pool = BackendPool(max_in_flight=8)
        pool.replace([(url, url) for url in self.by_url])
        self.probe(pool)
        return pool

    def probe(self, pool: BackendPool) -> None:
        """What a health round would record."""
        for backend in pool.backends:
            backend.record_probe(True, self.by_url[backend.url].health())
            pool.review(backend)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    settings = JobsSettings(jobs_dir=tmp_path / "jobs")
    database = create_database(settings)
    yield Registry(database, ArtifactStore.from_settings(settings))
    await database.close()


async def versions(registry: Registry, count: int) -> list[str]:
    """``count`` versions of MODEL, the first active."""
    made = []
    for i in range(count):
        manifest = await registry.register(MODEL, {"params.npz": f"params {i}".encode()}, source="upload")
        assert manifest is not None
        made.append(manifest.version)
    await registry.set_serving(MODEL, active=made[0], canary=None, canary_traffic=0, loaded=True,
                               expected_generation=None, by_key=None, action="first start")
    return made


def activation_over(registry: Registry, workers: Workers, timeout_s: float = 5.0) -> tuple[Activation, BackendPool]:
    pool = workers.pool()
    return Activation(registry, pool, WorkerAdmin(workers.client), timeout_s), pool


async def test_every_worker_loads_then_the_registry_commits_then_every_worker_switches(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    activation, pool = activation_over(registry, workers)
    answer = await activation.activate(MODEL, second, None, "key-id")
    assert answer["active"] == second and answer["canary"] is None
    assert [w["ok"] for w in answer["workers"]] == [True, True] and answer["took_ms"] >= 0
    assert all(w.serving["active"] == second and w.serving["origin"] == "registry" for w in workers)
    assert all(w.loaded[second] == {"params.npz": b"params 1"} for w in workers)
    state = await registry.serving(MODEL)
    assert state is not None and state.active == second
    history = await registry.history(MODEL)
    assert history[0].action == "activate" and history[0].by_key == "key-id"
    assert pool.expected(MODEL) == {"active": second, "canary": None, "canary_traffic": 0, "loaded": True}
    assert all(backend.in_rotation for backend in pool.backends)


async def test_a_canary_keeps_the_active_version_and_gets_its_share(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1")
    activation, _ = activation_over(registry, workers)
    await activation.activate(MODEL, first, None, None)
    answer = await activation.activate(MODEL, second, 10, None)
    assert (answer["active"], answer["canary"], answer["canary_traffic"]) == (first, second, 10)
    worker = next(iter(workers))
    assert (worker.serving["active"], worker.serving["canary"], worker.serving["canary_traffic"]) == (first, second, 10)
    with pytest.raises(ChangeRefused, match="is the active version"):
        await activation.activate(MODEL, first, 10, None)


async def test_one_worker_refusing_changes_nothing_and_the_answer_says_which_and_why(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    activation, _ = activation_over(registry, workers)
    await activation.activate(MODEL, first, None, None)
    workers.by_url["http://w2"].refuse = "predict_batch: output 'y' has shape (2,), expected (1,)"
    with pytest.raises(ActivationFailed) as failed:
        await activation.activate(MODEL, second, None, None)
    assert failed.value.status_code == 422
    assert "worker http://w2" in failed.value.message and "expected (1,)" in failed.value.message
    assert [w["ok"] for w in failed.value.workers] == [True, False]
    assert all(w.serving["active"] == first for w in workers)
    assert second not in workers.by_url["http://w1"].loaded  # the copy it loaded was dropped
    state = await registry.serving(MODEL)
    assert state is not None and state.active == first


async def test_a_worker_silent_past_the_deadline_changes_nothing(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    activation, _ = activation_over(registry, workers, timeout_s=0.3)
    await activation.activate(MODEL, first, None, None)
    workers.by_url["http://w1"].delay_s = 2.0
    with pytest.raises(ActivationFailed) as failed:
        await activation.activate(MODEL, second, None, None)
    assert failed.value.status_code == 503 and "no answer within the 0.3 s deadline" in failed.value.message
    assert all(w.serving["active"] == first for w in workers)
    state = await registry.serving(MODEL)
    assert state is not None and state.active == first


async def test_two_changes_in_one_gateway_are_serialised_never_mixed(registry: Registry) -> None:
    _, second, third = await versions(registry, 3)
    workers = Workers("w1", "w2")
    activation, _ = activation_over(registry, workers)
    for worker in workers:
        worker.delay_s = 0.05
    await asyncio.gather(activation.activate(MODEL, second, None, None), activation.activate(MODEL, third, None, None))
    state = await registry.serving(MODEL)
    assert state is not None and state.active == third
    assert [w.serving["active"] for w in workers] == [third, third]


async def test_of_two_gateways_changing_at_once_one_gets_409_and_the_workers_follow_the_other(
    registry: Registry,
) -> None:
    _, second, third = await versions(registry, 3)
    workers = Workers("w1", "w2")
    one, _ = activation_over(registry, workers)
    other, _ = activation_over(registry, workers)
    for worker in workers:
        worker.delay_s = 0.1  # both read the same generation before either commits
    results = await asyncio.gather(one.activate(MODEL, second, None, None), other.activate(MODEL, third, None, None),
                                   return_exceptions=True)
    conflicts = [r for r in results if isinstance(r, ActivationConflict)]
    winners = [r for r in results if isinstance(r, dict)]
    assert len(conflicts) == 1 and conflicts[0].status_code == 409 and len(winners) == 1
    state = await registry.serving(MODEL)
    assert state is not None and state.active == winners[0]["active"]
    assert [w.serving["active"] for w in workers] == [state.active, state.active]


async def test_a_store_outage_before_the_commit_leaves_every_worker_on_the_old_version(
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    activation, _ = activation_over(registry, workers)
    await activation.activate(MODEL, first, None, None)

    async def store_down(*args: object) -> None:
        raise JobsUnavailable("the artifact store did not answer")

    monkeypatch.setattr(registry, "files", store_down)
    with pytest.raises(JobsUnavailable):
        await activation.activate(MODEL, second, None, None)
    assert all(w.serving["active"] == first and second not in w.loaded for w in workers)


async def test_a_database_outage_at_the_commit_leaves_every_worker_on_the_old_version(
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    activation, _ = activation_over(registry, workers)
    await activation.activate(MODEL, first, None, None)
    calls_before = [w.serve_calls for w in workers]

    async def database_down(*args: object, **kwargs: object) -> None:
        raise JobsUnavailable("the job database did not answer")

    monkeypatch.setattr(registry, "set_serving", database_down)
    with pytest.raises(JobsUnavailable):
        await activation.activate(MODEL, second, None, None)
    assert [w.serve_calls for w in workers] == calls_before  # no worker was told to switch
    assert all(w.serving["active"] == first and second not in w.loaded for w in workers)


async def test_rollback_goes_back_to_the_version_active_before(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1")
    activation, _ = activation_over(registry, workers)
    with pytest.raises(ChangeRefused, match="no earlier active version"):
        await activation.rollback(MODEL, None)
    await activation.activate(MODEL, second, None, None)
    answer = await activation.rollback(MODEL, None)
    assert answer["active"] == first and next(iter(workers)).serving["active"] == first
    assert (await registry.history(MODEL))[0].action == "rollback"


async def test_unload_then_load_serves_the_same_version_again(registry: Registry) -> None:
    first, _ = await versions(registry, 2)
    workers = Workers("w1")
    activation, _ = activation_over(registry, workers)
    await activation.activate(MODEL, first, None, None)
    assert (await activation.unload(MODEL, None))["loaded"] is False
    assert next(iter(workers)).serving["loaded"] is False
    answer = await activation.load(MODEL, None)
    assert answer["loaded"] is True and answer["active"] == first
    assert next(iter(workers)).serving == {"active": first, "canary": None, "canary_traffic": 0, "loaded": True,
                                           "origin": "registry", "generation": answer["generation"]}


async def test_a_worker_that_fails_to_switch_after_the_commit_leaves_rotation(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    activation, pool = activation_over(registry, workers)
    await activation.activate(MODEL, first, None, None)
    failing = workers.by_url["http://w2"]

    async def refuse(request: Request) -> Response:
        return JSONResponse({"error": {"code": "internal_error", "message": "dying"}}, 500)

    failing.app.router.routes.insert(0, Route("/admin/serving", refuse, methods=["PUT"]))
    answer = await activation.activate(MODEL, second, None, None)
    assert [w["ok"] for w in answer["workers"]] == [True, False] and "dying" in answer["workers"][1]["error"]
    assert {backend.url: backend.in_rotation for backend in pool.backends} == {"http://w1": True, "http://w2": False}


async def test_a_late_push_of_an_older_state_is_refused_and_the_worker_keeps_serving_the_newer_one(
    registry: Registry,
) -> None:
    """Another gateway's reconciler read the registry before this change committed and pushes after it."""
    first, second = await versions(registry, 2)
    workers = Workers("w1")
    activation, pool = activation_over(registry, workers)
    committed = await activation.activate(MODEL, second, None, None)
    worker = workers.by_url["http://w1"]
    assert worker.serving["generation"] == committed["generation"]
    [backend] = pool.backends
    late = await activation.push(backend, MODEL, Target(first, generation=committed["generation"] - 1))
    assert not late.ok and "older than served" in (late.error or "")
    assert worker.serving["active"] == second and backend.in_rotation


async def test_a_change_fans_out_to_the_workers_of_that_model_only(registry: Registry) -> None:
    _, second = await versions(registry, 2)
    workers = Workers("w1", "w2", "other")
    other = workers.by_url["http://other"]
    other.health = lambda: {"status": "healthy", "model_name": "another-model", "model_version": "1",  # type: ignore[method-assign]
                            "serving": dict(other.serving)}
    activation, pool = activation_over(registry, workers)
    assert [backend.url for backend in activation.workers(MODEL)] == ["http://w1", "http://w2"]
    answer = await activation.activate(MODEL, second, None, None)
    assert [w["worker"] for w in answer["workers"]] == ["http://w1", "http://w2"]
    assert other.serve_calls == 0 and other.loaded == {} and other.serving["origin"] == "start"
    assert pool.expected("another-model") is None


@pytest.mark.parametrize(("token", "sent"), [("s3cret", "Bearer s3cret"), ("", None)])
async def test_every_admin_call_carries_the_workers_admin_token(token: str, sent: str | None) -> None:
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.headers.get("authorization")))
        return httpx.Response(200, json={}) if request.method != "GET" else httpx.Response(200, content=b"tar")

    admin = WorkerAdmin(httpx.AsyncClient(transport=httpx.MockTransport(answer)), token)
    await admin.load("http://w", MODEL, "v1", b"tar", 1.0)
    await admin.serve("http://w", Target("v1"), 1.0)
    await admin.drop("http://w", "v0", 1.0)
    assert await admin.artifacts("http://w", 1.0) == b"tar"
    assert seen == [("PUT", sent), ("PUT", sent), ("DELETE", sent), ("GET", sent)]
