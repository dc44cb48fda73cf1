"""Model versions on a worker: loaded beside the served one, checked, swapped between batches, canaries, unload.

The served model (``MODEL``, worker/model.py by default) with its own ``load`` and ``save`` makes a second
version (its parameters perturbed); ``Weighted``, a model of this file, is the one whose parameter shapes can
change without changing its outputs, and whose outputs a version can break.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jax
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from common.artifact_archive import pack, unpack
from common.model_headers import MODEL_VERSION_HEADER
from tests.conftest import worker_process
from tests.worker.test_app import FakeRuntime, make_client
from worker.admin_routes import Endpoint, admin_routes
from worker.app import create_app
from worker.batcher import Batcher, Target
from worker.contract import Model, Params, load_model_class, load_npz
from worker.errors import WorkerError
from worker.metrics import WorkerMetrics
from worker.responses import error_response
from worker.runtime import ModelRuntime
from worker.settings import WorkerSettings
from worker.versions import read_folder

pytestmark = pytest.mark.served_model  # the served model makes its second version: CI runs it with another model


class Weighted(Model):
    """Mean of the row weighted by each of ``k`` rows of ``w`` (any ``k``), and the row through ``v`` (4 x m)."""

    name = "weighted"
    version = "1"
    input_shape = (4,)
    example = [1.0, 2.0, 3.0, 4.0]
    outputs = {"mean": "The row weighted by each row of w, averaged.", "projected": "The row through v."}

    def load(self, artifacts: Path) -> Params:
        return load_npz(self.params_file(artifacts))

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        return {"mean": (x @ params["w"].T).mean(axis=1, keepdims=True), "projected": x @ params["v"]}


def weighted_params(k: int = 2, m: int = 3, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Parameters whose example answer is ``10 * scale`` (the example row sums to 10)."""
    return {"w": np.full((k, 4), scale, np.float32), "v": np.ones((4, m), np.float32)}


def files_of(model: Model, params: Params) -> dict[str, bytes]:
    """A version's files, as the model's own ``save`` writes them."""
    with tempfile.TemporaryDirectory() as folder:
        model.save(params, Path(folder))
        return read_folder(Path(folder))


def perturbed(params: Params, factor: float) -> Params:
    """Every float array scaled: the same shapes and dtypes, other numbers."""
    return jax.tree_util.tree_map(
        lambda a: np.asarray(a) * np.asarray(factor, np.asarray(a).dtype)
        if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a), params)


def put_version(client: TestClient | httpx.Client, model: Model, label: str, files: dict[str, bytes],
                name: str | None = None) -> httpx.Response:
    return client.put(f"/admin/versions/{label}", content=pack(files),
                      headers={"X-Model-Name": model.name if name is None else name})


def metric(client: TestClient | httpx.Client, series: str) -> float:
    """A series' value on the worker's /metrics (0 before it is first counted)."""
    return next((float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
                 if line.startswith(series + " ")), 0.0)


def compilations(client: TestClient | httpx.Client) -> float:
    return metric(client, "worker_jit_compilations_total")


def wait_ready(client: TestClient) -> None:
    for _ in range(600):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the worker never became ready")


class Served:
    """One runtime per model for the module (compiled once), a fresh app on it per test."""

    def __init__(self, model: Model, artifacts: Path, max_batch_size: int = 8) -> None:
        self.model = model
        self.settings = WorkerSettings(worker_id="v", max_batch_size=max_batch_size, model_artifacts=artifacts)
        self.metrics = WorkerMetrics(max_batch_size)
        self.runtime = ModelRuntime(model, artifacts, self.settings.bucket_sizes, self.metrics)

    @contextlib.contextmanager
    def client(self, **settings: Any) -> Iterator[TestClient]:
        """A client of a fresh app, once ready; ``settings`` change the module's."""
        config = self.settings.model_copy(update=settings)
        with TestClient(create_app(config, self.runtime, self.metrics)) as client:
            wait_ready(client)
            yield client


@pytest.fixture(scope="module")
def served() -> Served:
    """The served model and its start artifacts."""
    settings = WorkerSettings()
    return Served(load_model_class(settings.model)(), settings.model_artifacts)


@pytest.fixture(scope="module")
def weighted(tmp_path_factory: pytest.TempPathFactory) -> Served:
    artifacts = tmp_path_factory.mktemp("weighted")
    Weighted().save(weighted_params(), artifacts)
    return Served(Weighted(), artifacts)


def example(client: TestClient, model: Model, path: str = "/predict") -> httpx.Response:
    return client.post(path, json={"input_data": model.example if model.example is not None else
                                   np.zeros(model.input_shape).tolist()})


def test_at_start_the_contract_version_serves_with_origin_start(weighted: Served) -> None:
    with weighted.client() as client:
        health = client.get("/health").json()
        assert health["model_version"] == "1"
        assert health["serving"] == {"active": "1", "canary": None, "canary_traffic": 0, "loaded": True,
                                     "origin": "start", "generation": None}
        answer = example(client, weighted.model)
        assert answer.headers[MODEL_VERSION_HEADER] == "1" and answer.json()["prediction"] == [10.0]
        start_files = unpack(client.get("/admin/artifacts").content, 10**6)
        assert start_files == read_folder(weighted.settings.model_artifacts)


def test_same_shapes_swap_with_zero_compilations_and_no_failed_request(served: Served) -> None:
    model = served.model
    new_files = files_of(model, perturbed(model.load(served.settings.model_artifacts), 1.01))
    with served.client() as client:
        old = client.get("/health").json()["model_version"]
        before = compilations(client)
        answers: list[tuple[float, float, int, str]] = []
        stop = threading.Event()

        def predict_until_stopped() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                response = example(client, model)
                answers.append((sent, time.monotonic(), response.status_code,
                                response.headers.get(MODEL_VERSION_HEADER, "")))

        threads = [threading.Thread(target=predict_until_stopped) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        loaded = put_version(client, model, "new", new_files)
        time.sleep(0.2)
        switch = client.put("/admin/serving", json={"active": "new"})
        switched_at = time.monotonic()
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        assert loaded.status_code == 200 and loaded.json()["compilations"] == 0, loaded.text
        assert switch.status_code == 200 and switch.json()["active"] == "new"
        assert compilations(client) == before
    assert answers and {status for *_, status, _ in answers} == {200}
    assert {version for *_, version in answers} == {old, "new"}
    assert {version for sent, _, _, version in answers if sent > switched_at} == {"new"}


def test_new_shapes_compile_off_the_serving_path_while_the_old_version_serves(weighted: Served) -> None:
    model = weighted.model
    with weighted.client() as client:
        buckets = len(weighted.settings.bucket_sizes)
        before = compilations(client)
        during: list[httpx.Response] = []
        loading = threading.Thread(target=lambda: during.append(
            put_version(client, model, "2", files_of(model, weighted_params(k=5, scale=2.0)))))
        loading.start()
        answers = []
        while loading.is_alive():
            answers.append(example(client, model))
        loading.join()
        [loaded] = during
        assert loaded.status_code == 200 and loaded.json()["compilations"] == buckets
        assert compilations(client) == before + buckets
        assert answers and all(a.status_code == 200 and a.headers[MODEL_VERSION_HEADER] == "1" for a in answers)
        assert client.get("/health").json()["serving"]["active"] == "1"
        assert client.put("/admin/serving", json={"active": "2"}).status_code == 200
        answer = example(client, model)
        assert answer.headers[MODEL_VERSION_HEADER] == "2" and answer.json()["prediction"] == [20.0]
        assert compilations(client) == before + buckets


@pytest.mark.parametrize(("files", "name", "status", "reason"), [
    ({"weighted.npz": b"not an npz"}, None, 422, "model 'weighted' (tests.worker.test_versions:Weighted): load: "),
    (files_of(Weighted(), weighted_params(m=2)), None, 422, "predict_batch: outputs (mean (1,) float32, projected (2,"),
    (files_of(Weighted(), weighted_params(scale=np.inf)), None, 422, "example: the model's output 'mean' is not "),
    (files_of(Weighted(), weighted_params(scale=2.0)), "another-model", 409, "serves model 'weighted'"),
])
def test_a_version_that_fails_a_check_is_refused_and_nothing_changes(
        weighted: Served, files: dict[str, bytes], name: str | None, status: int, reason: str) -> None:
    with weighted.client() as client:
        refused = put_version(client, weighted.model, "bad", files, name)
        assert refused.status_code == status, refused.text
        assert reason in refused.json()["error"]["message"]
        assert refused.json()["error"]["code"] == ("version_refused" if status == 422 else "wrong_model")
        assert client.get("/health").json()["serving"]["active"] == "1"
        assert example(client, weighted.model).json()["prediction"] == [10.0]
        not_loaded = client.put("/admin/serving", json={"active": "bad"})
        assert not_loaded.status_code == 409 and not_loaded.json()["error"]["code"] == "version_not_loaded"
        assert "version bad not loaded" in not_loaded.json()["error"]["message"]


def test_a_corrupt_archive_is_refused_with_the_reason(weighted: Served) -> None:
    with weighted.client() as client:
        archive = pack(files_of(Weighted(), weighted_params(scale=2.0)))
        refused = client.put("/admin/versions/2", content=archive[:700], headers={"X-Model-Name": "weighted"})
        assert refused.status_code == 422
        assert refused.json()["error"]["message"].startswith("version 2 refused: model 'weighted': archive: ")
        assert example(client, weighted.model).headers[MODEL_VERSION_HEADER] == "1"


def test_a_version_over_the_size_limit_is_413(weighted: Served, tmp_path: Path) -> None:
    files = files_of(Weighted(), weighted_params(scale=2.0))
    with weighted.client(worker_max_artifact_bytes=len(pack(files)) - 1, worker_versions_dir=tmp_path) as client:
        refused = put_version(client, weighted.model, "2", files)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "payload_too_large"
        assert not any(tmp_path.iterdir())  # nothing was unpacked


def test_a_canary_answers_its_share_of_the_requests(weighted: Served) -> None:
    with weighted.client() as client:
        assert put_version(client, weighted.model, "2", files_of(Weighted(), weighted_params(scale=2.0))).is_success
        counted = 'worker_predictions_total{route="/predict",version="2"}'
        before = metric(client, counted)
        state = client.put("/admin/serving", json={"active": "1", "canary": "2", "canary_traffic": 10}).json()
        assert state == {"active": "1", "canary": "2", "canary_traffic": 10, "loaded": True, "origin": "registry",
                         "generation": None}
        answers = [example(client, weighted.model) for _ in range(1000)]
        by_canary = [a for a in answers if a.headers[MODEL_VERSION_HEADER] == "2"]
        assert 50 <= len(by_canary) <= 150
        assert {a.json()["prediction"][0] for a in by_canary} == {20.0}
        assert {a.json()["prediction"][0] for a in answers if a not in by_canary} == {10.0}
        assert metric(client, counted) == before + len(by_canary)
        assert metric(client, 'worker_batch_size_count{version="1"}') > 0


def test_unloaded_predictions_are_404_health_200_and_loaded_again_it_serves(weighted: Served) -> None:
    with weighted.client() as client:
        assert client.put("/admin/serving", json={"active": "1", "loaded": False}).json()["loaded"] is False
        for path in ("/predict", "/v2/models/weighted/infer"):
            unloaded = client.post(path, json={"input_data": [1, 2, 3, 4]})
            assert unloaded.status_code == 404, path
        assert example(client, weighted.model).json()["error"]["code"] == "model_unloaded"
        assert client.get("/health").status_code == 200
        assert client.put("/admin/serving", json={"active": "1", "loaded": True}).status_code == 200
        assert example(client, weighted.model).json()["prediction"] == [10.0]
        # Unloaded, the versions named need not be loaded; to serve again they must be.
        assert client.put("/admin/serving", json={"active": "7", "loaded": False}).status_code == 200
        assert client.get("/health").json()["serving"] | {"origin": ""} == {
            "active": "7", "canary": None, "canary_traffic": 0, "loaded": False, "origin": "", "generation": None}
        refused = client.put("/admin/serving", json={"active": "7", "loaded": True})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "version_not_loaded"


def infer(client: TestClient, path: str) -> httpx.Response:
    return client.post(path, json={"inputs": [{"name": "input_data", "shape": [1, 4], "datatype": "FP32",
                                               "data": [1, 2, 3, 4]}]})


def test_the_protocol_names_the_version_and_serves_only_loaded_ones(weighted: Served) -> None:
    with weighted.client() as client:
        assert put_version(client, weighted.model, "2", files_of(Weighted(), weighted_params(scale=2.0))).is_success
        assert infer(client, "/v2/models/weighted/versions/2/infer").status_code == 404  # loaded, not serving
        client.put("/admin/serving", json={"active": "1", "canary": "2", "canary_traffic": 1})
        for label, mean in (("1", 10.0), ("2", 20.0)):
            answer = infer(client, f"/v2/models/weighted/versions/{label}/infer")
            assert answer.json()["model_version"] == label and answer.headers[MODEL_VERSION_HEADER] == label
            assert answer.json()["outputs"][0]["data"] == [mean]
            assert client.get(f"/v2/models/weighted/versions/{label}/ready").status_code == 200
        assert client.get("/v2/models/weighted").json()["versions"] == ["1", "2"]
        client.put("/admin/serving", json={"active": "2"})
        gone = infer(client, "/v2/models/weighted/versions/1/infer")
        assert gone.status_code == 404 and "unknown model weighted version 1" in gone.json()["error"]
        assert client.get("/v2/models/weighted/versions/1/ready").status_code == 404
        assert infer(client, "/v2/models/weighted/infer").json()["model_version"] == "2"


def test_loads_are_idempotent_and_shared(weighted: Served) -> None:
    files = files_of(Weighted(), weighted_params(k=3, scale=3.0))
    with weighted.client() as client:
        before = compilations(client)
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(put_version(client, weighted.model, "3", files)))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.status_code for r in results] == [200] * 3
        assert compilations(client) == before + len(weighted.settings.bucket_sizes)  # one load for the three
        again = put_version(client, weighted.model, "3", files)
        assert again.json() == {"version": "3", "compilations": 0, "load_ms": 0.0}
        same_as_start = put_version(client, weighted.model, "1", read_folder(weighted.settings.model_artifacts))
        assert same_as_start.json()["compilations"] == 0


def test_the_start_label_sent_with_other_files_serves_those(weighted: Served) -> None:
    """A gateway's version 1 may not be the files this worker started with: it then serves the gateway's."""
    with weighted.client() as client:
        assert put_version(client, weighted.model, "1", files_of(Weighted(), weighted_params(scale=4.0))).is_success
        assert example(client, weighted.model).json()["prediction"] == [40.0]


def test_serving_changes_are_checked(weighted: Served) -> None:
    with weighted.client() as client:
        assert put_version(client, weighted.model, "2", files_of(Weighted(), weighted_params(scale=2.0))).is_success
        for body, message in (({"active": "1", "canary": "1", "canary_traffic": 5}, "must differ from active"),
                              ({"active": "1", "canary": "2"}, "1 to 99 with a canary"),
                              ({"active": "1", "canary_traffic": 5}, "0 without a canary"),
                              ({"active": "1", "canary": "2", "canary_traffic": 100}, "canary_traffic"),
                              ({"canary": "2"}, "active: Field required")):
            refused = client.put("/admin/serving", json=body)
            assert refused.status_code == 422 and message in refused.json()["error"]["message"], body
        assert client.put("/admin/serving", content=b"{").status_code == 400
        in_use = client.delete("/admin/versions/1")
        assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "version_in_use"
        assert client.delete("/admin/versions/2").json() == {"version": "2", "unloaded": True}
        assert client.delete("/admin/versions/2").json() == {"version": "2", "unloaded": False}
        assert put_version(client, weighted.model, "no/slash", {"a": b"x"}).status_code == 404  # not a route
        invalid = put_version(client, weighted.model, "x" * 65, {"a": b"x"})
        assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_version"
        # Two gateways' pushes can cross: the older registry generation never lands last.
        assert client.put("/admin/serving", json={"active": "1", "generation": 5}).json()["generation"] == 5
        stale = client.put("/admin/serving", json={"active": "2", "generation": 4})
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_generation"
        assert client.put("/admin/serving", json={"active": "1", "generation": -1}).status_code == 422
        assert client.get("/health").json()["serving"]["active"] == "1"


class GatedRuntime(FakeRuntime):
    """The fake summing runtime: while ``open`` is clear a model call waits; it records when it frees the start."""

    def __init__(self) -> None:
        super().__init__()
        self.warm.set()
        self.open, self.entered, self.released = threading.Event(), threading.Event(), threading.Event()
        self.open.set()

    def infer(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.open.wait(10)
        return super().infer(rows)

    def release_start_params(self) -> None:
        self.released.set()


def test_the_start_parameters_are_freed_once_no_request_needs_them() -> None:
    runtime = GatedRuntime()
    with make_client(runtime) as client:
        wait_ready(client)
        assert put_version(client, runtime.model, "4", {"any": b"file"}).status_code == 200
        runtime.open.clear()
        runtime.entered.clear()
        answers: list[httpx.Response] = []
        computing = threading.Thread(target=lambda: answers.append(
            client.post("/predict", json={"input_data": [1, 2, 3, 4]})))
        computing.start()
        assert runtime.entered.wait(5)  # a request of the start version is in the model
        assert client.put("/admin/serving", json={"active": "4"}).status_code == 200
        time.sleep(0.2)
        assert not runtime.released.is_set()
        runtime.open.set()
        computing.join()
        assert answers[0].status_code == 200 and answers[0].headers[MODEL_VERSION_HEADER] == "3"
        assert runtime.released.wait(5)
        assert client.post("/predict", json={"input_data": [1, 2, 3, 4]}).headers[MODEL_VERSION_HEADER] == "4"


def test_the_batcher_computes_each_version_in_batches_of_its_own() -> None:
    calls: list[tuple[str, list[float]]] = []
    gate = threading.Event()

    def version(label: str, offset: float) -> Target:
        def run(rows: np.ndarray) -> dict[str, np.ndarray]:
            gate.wait(5)
            calls.append((label, rows[:, 0].tolist()))
            return {"y": rows + offset}
        return Target(run, label)

    a, b = version("a", 100.0), version("b", 200.0)

    async def scenario() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(a.infer, max_batch_size=8, timeout_s=0, max_queue_rows=64)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.array([[0.0]]), a))
        await asyncio.sleep(0.05)  # the first batch holds the thread: the rest queue up behind it
        rest = [asyncio.create_task(batcher.submit(np.array([[float(i)]]), a if i % 2 else b)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        gate.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert calls == [("a", [0.0]), ("a", [1.0, 3.0, 5.0]), ("b", [2.0, 4.0, 6.0])]
    assert [float(answer["y"][0, 0]) for answer in answers] == [100, 101, 202, 103, 204, 105, 206]


def test_a_worker_process_swaps_versions_under_load(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The served model in a real worker: a version with perturbed parameters, swapped in while clients send."""
    model = load_model_class(WorkerSettings().model)()
    new_files = files_of(model, perturbed(model.load(WorkerSettings().model_artifacts), 0.99))
    versions_dir = tmp_path_factory.mktemp("versions")
    row = {"input_data": model.example if model.example is not None else np.zeros(model.input_shape).tolist()}
    with worker_process(tmp_path_factory, WORKER_VERSIONS_DIR=str(versions_dir)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        start = client.get("/health").json()
        assert start["serving"]["origin"] == "start" and start["model_version"] == str(model.version)
        before = compilations(client)
        answers: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def predict_until_stopped() -> None:
            with httpx.Client(base_url=url, timeout=30) as own:
                while not stop.is_set():
                    sent = time.monotonic()
                    response = own.post("/predict", json=row)
                    answers.append((sent, response.status_code, response.headers.get(MODEL_VERSION_HEADER, "")))

        threads = [threading.Thread(target=predict_until_stopped) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        loaded = put_version(client, model, "2", new_files)
        assert any(versions_dir.iterdir())  # unpacked where it was told
        switch = client.put("/admin/serving", json={"active": "2"})
        switched_at = time.monotonic()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        assert loaded.status_code == 200 and loaded.json()["compilations"] == 0, loaded.text
        assert switch.status_code == 200
        assert compilations(client) == before
        health = client.get("/health").json()
        assert health["model_version"] == "2" and health["serving"]["origin"] == "registry"
        batch = client.post("/batch_predict", json=[row, row])
        assert batch.status_code == 200 and batch.headers[MODEL_VERSION_HEADER] == "2"
        assert 'worker_predictions_total{route="/predict",version="2"}' in client.get("/metrics").text
    assert {status for _, status, _ in answers} == {200}
    assert {version for *_, version in answers} == {str(model.version), "2"}
    assert {version for sent, _, version in answers if sent > switched_at} == {"2"}


def admin_app(token: str | None) -> TestClient:
    """The worker's admin routes alone, with its error envelope, over versions that drop nothing."""

    def wrap(route: str, endpoint: Endpoint) -> Endpoint:
        async def enveloped(request: Request) -> Response:
            try:
                return await endpoint(request)
            except WorkerError as error:
                return error_response(error, None)

        return enveloped

    versions = SimpleNamespace(unload=lambda label: False)
    return TestClient(Starlette(routes=admin_routes("m", versions, 1024, 1024, wrap,  # type: ignore[arg-type]
                                                    admin_token=token)))


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic s3cret", "s3cret", "Bearer "])
def test_with_an_admin_token_the_admin_routes_refuse_anyone_without_it(authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with admin_app("s3cret") as client:
        for method, path in [("DELETE", "/admin/versions/v1"), ("PUT", "/admin/serving"),
                             ("PUT", "/admin/versions/v2"), ("GET", "/admin/artifacts")]:
            answer = client.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert "WORKER_ADMIN_TOKEN" in answer.json()["error"]["message"]


def test_the_admin_token_opens_the_admin_routes_and_without_one_they_are_open() -> None:
    with admin_app("s3cret") as client:
        answer = client.delete("/admin/versions/v1", headers={"Authorization": "Bearer s3cret"})
        assert answer.status_code == 200 and answer.json() == {"version": "v1", "unloaded": False}
    with admin_app(None) as client:
        assert client.delete("/admin/versions/v1").json() == {"version": "v1", "unloaded": False}


def test_an_empty_admin_token_setting_means_none() -> None:
    assert WorkerSettings(worker_admin_token="").worker_admin_token is None
