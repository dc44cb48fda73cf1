"""One pool per model: the backends grouped by the model their /health reports, and which model a path names."""

from __future__ import annotations

import pytest

from gateway.backends import AllBackendsBusy, Backend, BackendPool, NoHealthyBackend
from gateway.model_paths import model_of, prediction_route


def reporting(url: str, model: str | None, healthy: bool = True) -> Backend:
    backend = Backend(url=url, source=url)
    backend.record_probe(healthy, {"status": "healthy", "model_name": model} if model else {})
    return backend


def pool_of(*backends: Backend, default: str | None = None, max_in_flight: int = 8) -> BackendPool:
    pool = BackendPool(max_in_flight=max_in_flight, default_model=default)
    pool.replace([(backend.url, backend.source) for backend in backends])
    for backend, known in zip(backends, pool.backends, strict=True):
        known.info, known.state = backend.info, backend.state
    return pool


def test_each_model_is_balanced_over_its_own_workers_only() -> None:
    pool = pool_of(reporting("a1", "a"), reporting("b1", "b"), reporting("a2", "a"))
    assert pool.models() == ["a", "b"] and pool.serves("b") and not pool.serves("c")
    assert [pool.choose("a").url for _ in range(4)] == ["a1", "a2", "a1", "a2"]
    assert {pool.choose("b").url for _ in range(3)} == {"b1"}
    assert pool.summary("a") == (2, 2) and pool.summary("b") == (1, 1) and pool.summary() == (3, 3)


def test_the_default_is_the_setting_else_the_first_worker_that_reported_a_model() -> None:
    assert pool_of(reporting("x", None), reporting("b1", "b"), reporting("a1", "a")).default_model() == "b"
    assert pool_of(reporting("b1", "b"), reporting("a1", "a"), default="a").default_model() == "a"
    assert pool_of(reporting("x", None)).default_model() is None


def test_a_model_whose_workers_are_all_down_has_no_worker_and_the_others_are_untouched() -> None:
    pool = pool_of(reporting("a1", "a", healthy=False), reporting("b1", "b"))
    with pytest.raises(NoHealthyBackend, match="'a'"):
        pool.choose("a")
    assert pool.choose("b").url == "b1"
    assert pool.models() == ["a", "b"]  # still served: 503 for it, not 404


def test_in_flight_bounds_are_per_worker_of_the_pool() -> None:
    pool = pool_of(reporting("a1", "a"), reporting("b1", "b"), max_in_flight=1)
    pool.choose("a").in_flight += 1
    with pytest.raises(AllBackendsBusy):
        pool.choose("a")
    assert pool.choose("b").url == "b1"


def test_a_worker_that_restarts_with_another_model_moves_pools() -> None:
    pool = pool_of(reporting("w1", "a"), reporting("w2", "a"))
    moved = pool.backends[1]
    moved.record_probe(True, {"status": "healthy", "model_name": "b"})
    assert [b.url for b in pool.pool("a")] == ["w1"] and [b.url for b in pool.pool("b")] == ["w2"]
    assert {pool.choose("a").url for _ in range(3)} == {"w1"}


def test_the_served_models_metadata_is_per_model() -> None:
    pool = pool_of(reporting("a1", "a"), reporting("b1", "b"), default="b")
    pool.backends[0].metadata = {"name": "a", "version": "1"}
    pool.backends[1].metadata = {"name": "b", "version": "4"}
    assert pool.served_model("a") == {"name": "a", "version": "1"}
    assert pool.served_model() == {"name": "b", "version": "4"}
    assert list(pool.served_models()) == ["a", "b"]


@pytest.mark.parametrize(("path", "model"), [
    ("/models/iris/predict", "iris"), ("/models/iris/versions", "iris"), ("/v2/models/reg/infer", "reg"),
    ("/v2/models/reg/versions/2/ready", "reg"), ("/v2/models/reg", "reg"), ("/predict", None),
    ("/batch_predict", None), ("/models", None), ("/models/ui", None), ("/v2/health/ready", None), ("/models/", None),
])
def test_model_of_names_the_model_in_the_path(path: str, model: str | None) -> None:
    assert model_of(path) == model


@pytest.mark.parametrize(("path", "route"), [
    ("/models/iris/predict", ("iris", "/predict")), ("/models/iris/batch_predict/", ("iris", "/batch_predict")),
    ("/models/iris/versions", None), ("/models//predict", None), ("/models/a/b/predict", None), ("/predict", None),
])
def test_prediction_routes_name_the_model_and_the_workers_path(path: str, route: tuple[str, str] | None) -> None:
    assert prediction_route(path) == route
