"""The reconciler against fake workers (tests/gateway/test_activation.py) and a real registry on SQLite.

First start registers a worker's start files as version 1 and activates it; a worker whose versions differ
is pushed within MODEL_RECONCILE_S; one on its start files stays out of rotation while the registry knows
the active version; with the database down nothing changes and serving continues; promotions are run.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.activation import Activation, WorkerAdmin
from gateway.backends import BackendPool
from gateway.reconciler import Reconciler
from jobs.errors import JobsUnavailable
from jobs.registry import Registry
from tests.gateway.test_activation import MODEL, START_FILES, Workers, registry, versions

__all__ = ["registry"]  # the fixture, shared


def reconciler_over(registry: Registry, workers: Workers) -> tuple[Reconciler, BackendPool]:
    pool = workers.pool()
    activation = Activation(registry, pool, WorkerAdmin(workers.client), 5.0)
    return Reconciler(activation, pool, interval_s=0.05, max_artifact_bytes=1 << 20, timeout_s=5.0), pool


async def test_first_start_registers_the_start_files_as_version_1_and_serves_it(registry: Registry) -> None:
    workers = Workers("w1", "w2")
    reconciler, pool = reconciler_over(registry, workers)
    backends = pool.backends
    assert not any(backend.in_rotation for backend in backends)  # on start files, the registry not yet asked
    await reconciler.round()
    [info] = await registry.versions(MODEL)
    assert info.version == "1" and info.source == "shipped"
    assert await registry.files(MODEL, "1") == START_FILES
    state = await registry.serving(MODEL)
    assert state is not None and state.active == "1"
    assert (await registry.history(MODEL))[0].action == "first start"
    assert all(w.serving["active"] == "1" and w.serving["origin"] == "registry" for w in workers)
    assert all(backend.in_rotation for backend in backends)


async def test_a_worker_whose_versions_differ_is_pushed_within_a_round(registry: Registry) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1", "w2")
    reconciler, pool = reconciler_over(registry, workers)
    await reconciler.round()
    assert all(w.serving["active"] == first for w in workers)
    # A change another gateway made, which these workers missed:
    await registry.set_serving(MODEL, active=second, canary=None, canary_traffic=0, loaded=True,
                               expected_generation=(await registry.serving(MODEL)).generation, by_key=None,
                               action="activate")
    for worker in workers:
        worker.switched.clear()
    workers.probe(pool)
    running = asyncio.create_task(reconciler.run())
    try:
        await asyncio.wait_for(asyncio.gather(*(w.switched.wait() for w in workers)), 2.0)
    finally:
        reconciler.stop()
        await running
    assert all(w.serving["active"] == second for w in workers)


async def test_a_worker_on_its_start_files_stays_out_of_rotation_until_pushed(registry: Registry) -> None:
    first, _ = await versions(registry, 2)
    workers = Workers("w1", "w2")
    reconciler, pool = reconciler_over(registry, workers)
    await reconciler.round()
    restarted = workers.by_url["http://w2"]
    restarted.serving = {"active": "7", "canary": None, "canary_traffic": 0, "loaded": True, "origin": "start"}
    workers.probe(pool)
    in_rotation = {backend.url: backend.in_rotation for backend in pool.backends}
    assert in_rotation == {"http://w1": True, "http://w2": False}
    await reconciler.round()
    assert restarted.serving["active"] == first and restarted.serving["origin"] == "registry"
    workers.probe(pool)
    assert all(backend.in_rotation for backend in pool.backends)


async def test_with_the_database_down_nothing_changes_and_serving_continues(
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, _ = await versions(registry, 2)
    workers = Workers("w1")
    reconciler, pool = reconciler_over(registry, workers)
    await reconciler.round()

    async def down(*args: object, **kwargs: object) -> None:
        raise JobsUnavailable("the job database did not answer")

    for method in ("serving", "versions", "register", "set_serving", "take_promotion"):
        monkeypatch.setattr(registry, method, down)
    calls = next(iter(workers)).serve_calls
    await reconciler.round()
    assert next(iter(workers)).serve_calls == calls
    assert next(iter(workers)).serving["active"] == first
    assert all(backend.in_rotation for backend in pool.backends)


async def test_the_database_down_at_the_first_round_lets_start_files_serve(
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = Workers("w1")
    reconciler, pool = reconciler_over(registry, workers)

    async def down(*args: object, **kwargs: object) -> None:
        raise JobsUnavailable("the job database did not answer")

    monkeypatch.setattr(registry, "serving", down)
    await reconciler.round()
    assert all(backend.in_rotation for backend in pool.backends)


async def test_a_pending_promotion_is_activated_and_its_outcome_recorded(registry: Registry) -> None:
    _, second = await versions(registry, 2)
    workers = Workers("w1")
    reconciler, pool = reconciler_over(registry, workers)
    await reconciler.round()
    await registry.request_promotion(MODEL, second, "job-1")
    await reconciler.round()
    assert await registry.promotion_outcome("job-1") == (True, None)
    assert next(iter(workers)).serving["active"] == second
    assert (await registry.history(MODEL))[0].action == "promote"


async def test_a_push_is_skipped_when_another_gateway_changed_the_model_meanwhile(
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = await versions(registry, 2)
    workers = Workers("w1")
    reconciler, _ = reconciler_over(registry, workers)  # the worker is on its start files: stale
    read_files = registry.files

    async def files_while_another_gateway_activates(model_name: str, version: str) -> dict[str, bytes]:
        state = await registry.serving(model_name)
        if state is not None and state.active == first:
            await registry.set_serving(MODEL, active=second, canary=None, canary_traffic=0, loaded=True,
                                       expected_generation=state.generation, by_key=None, action="activate")
        return await read_files(model_name, version)

    monkeypatch.setattr(registry, "files", files_while_another_gateway_activates)
    await reconciler.round()
    assert next(iter(workers)).serve_calls == 0  # version 1 was not pushed over the newer change
    await reconciler.round()
    assert next(iter(workers)).serving["active"] == second


async def test_in_a_registry_outage_workers_all_restarted_serve_their_start_files_rather_than_nothing(
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await versions(registry, 1)
    workers = Workers("w1")
    reconciler, pool = reconciler_over(registry, workers)
    await reconciler.round()
    restarted = next(iter(workers))
    restarted.serving = {"active": "7", "canary": None, "canary_traffic": 0, "loaded": True, "origin": "start"}
    workers.probe(pool)
    assert not any(backend.in_rotation for backend in pool.backends)

    async def down(*args: object, **kwargs: object) -> None:
        raise JobsUnavailable("the job database did not answer")

    monkeypatch.setattr(registry, "serving", down)
    await reconciler.round()
    assert all(backend.in_rotation for backend in pool.backends)
    monkeypatch.undo()
    await reconciler.round()  # the registry is back: its state is pushed
    assert restarted.serving["origin"] == "registry"
