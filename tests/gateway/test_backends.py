"""Balancing (round robin, least outstanding), the health state machine and outlier ejection."""

from __future__ import annotations

import pytest

from gateway.backends import AllBackendsBusy, Backend, BackendPool, BackendState, NoHealthyBackend


def pool_of(*urls: str, max_in_flight: int = 10, healthy: bool = True, balancer: str = "round_robin") -> BackendPool:
    pool = BackendPool(max_in_flight=max_in_flight, balancer=balancer)
    pool.replace([(url, url) for url in urls])
    if healthy:
        for backend in pool.backends:
            backend.record_probe(True, {"worker_id": backend.url})
    return pool


def test_round_robin_alternates_over_healthy_backends() -> None:
    pool = pool_of("http://a", "http://b", "http://c")
    assert [pool.choose().url for _ in range(6)] == ["http://a", "http://b", "http://c"] * 2


def test_unhealthy_and_unknown_backends_get_no_requests() -> None:
    pool = pool_of("http://a", "http://b", "http://c")
    pool.backends[1].eject("connection refused")
    pool.replace([*[(b.url, b.url) for b in pool.backends], ("http://new", "new")])  # unknown until probed
    assert {pool.choose().url for _ in range(6)} == {"http://a", "http://c"}


def test_no_healthy_backend_raises() -> None:
    with pytest.raises(NoHealthyBackend):
        pool_of("http://a", healthy=False).choose()
    with pytest.raises(NoHealthyBackend):
        BackendPool(max_in_flight=1).choose()


def test_exclude_skips_backends_already_tried() -> None:
    pool = pool_of("http://a", "http://b")
    first = pool.choose()
    assert pool.choose(exclude={first}) is not first
    with pytest.raises(NoHealthyBackend):
        pool.choose(exclude=set(pool.backends))


def test_backends_at_their_in_flight_bound_are_skipped_then_shed() -> None:
    pool = pool_of("http://a", "http://b", max_in_flight=2)
    a, b = pool.backends
    a.in_flight = 2
    assert {pool.choose().url for _ in range(4)} == {"http://b"}
    b.in_flight = 2
    with pytest.raises(AllBackendsBusy):
        pool.choose()


def test_health_state_machine() -> None:
    backend = Backend(url="http://a")
    assert backend.state is BackendState.UNKNOWN and not backend.healthy
    backend.record_probe(False, error="/health answered 503")
    assert backend.state is BackendState.UNHEALTHY and backend.last_error == "/health answered 503"
    backend.record_probe(True, {"worker_id": "7", "model_name": "m", "model_version": "1"})
    assert backend.healthy and backend.last_error is None
    backend.eject("connection refused")
    assert backend.state is BackendState.UNHEALTHY
    backend.record_probe(True)
    assert backend.healthy
    assert backend.describe()["worker_id"] == "7"  # what the worker said last is kept


def test_replace_keeps_the_state_of_known_backends() -> None:
    pool = pool_of("http://a", "http://b")
    a = pool.backends[0]
    pool.replace([("http://a", "w:8000"), ("http://c", "w:8000")])
    assert pool.backends[0] is a and a.healthy
    assert [b.url for b in pool.backends] == ["http://a", "http://c"]
    assert pool.summary() == (1, 2)


def test_probes_without_an_answer_eject_only_after_several_in_a_row() -> None:
    backend = Backend(url="http://a")
    backend.record_probe(True)
    backend.record_missed_probe("no answer to /health: ReadTimeout", misses_to_eject=3)
    backend.record_missed_probe("no answer to /health: ReadTimeout", misses_to_eject=3)
    assert backend.healthy  # busy, not gone
    backend.record_probe(True)
    assert backend.missed_probes == 0
    for _ in range(3):
        backend.record_missed_probe("no answer to /health: ReadTimeout", misses_to_eject=3)
    assert backend.state is BackendState.UNHEALTHY and "ReadTimeout" in backend.last_error


def test_a_worker_never_seen_healthy_is_not_admitted_on_a_missed_probe() -> None:
    backend = Backend(url="http://a")
    backend.record_missed_probe("no answer to /health: ConnectTimeout", misses_to_eject=3)
    assert backend.state is BackendState.UNHEALTHY


def test_least_outstanding_sends_to_the_backend_with_fewest_in_flight() -> None:
    pool = pool_of("http://a", "http://b", "http://c", balancer="least_outstanding")
    a, b, c = pool.backends
    a.in_flight, b.in_flight, c.in_flight = 5, 1, 3
    assert pool.choose() is b
    b.in_flight = 9
    assert pool.choose() is c


def test_least_outstanding_breaks_ties_in_turn_and_sheds_at_the_bound() -> None:
    pool = pool_of("http://a", "http://b", balancer="least_outstanding", max_in_flight=2)
    assert {pool.choose().url for _ in range(4)} == {"http://a", "http://b"}
    for backend in pool.backends:
        backend.in_flight = 2
    with pytest.raises(AllBackendsBusy):
        pool.choose()


def test_an_unknown_balancer_is_refused() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        BackendPool(max_in_flight=1, balancer="random")


def test_failed_tries_in_a_row_eject_until_a_probe_passes() -> None:
    backend = Backend(url="http://a")
    backend.record_probe(True)
    assert not backend.record_try(False, "answered 500", failures_to_eject=3)
    assert not backend.record_try(False, "answered 500", failures_to_eject=3)
    assert not backend.record_try(True, "", failures_to_eject=3)  # a success resets the count
    assert [backend.record_try(False, "answered 500", failures_to_eject=3) for _ in range(3)] == [False, False, True]
    assert backend.state is BackendState.UNHEALTHY and "3 failed requests in a row" in backend.last_error
    assert not backend.record_try(False, "answered 500", failures_to_eject=3)  # ejected once, counted once
    backend.record_probe(True)
    assert backend.healthy and backend.failed_tries == 0


def test_a_failed_batch_counts_every_request_it_carried() -> None:
    backend = Backend(url="http://a")
    backend.record_probe(True)
    assert not backend.record_try(False, "answered 500", failures_to_eject=5, requests=4)
    assert backend.record_try(False, "no answer within 1.0s", failures_to_eject=5, requests=2)
    assert "6 failed requests in a row" in backend.last_error


def test_a_caller_may_ask_for_the_least_outstanding_backend_under_round_robin() -> None:
    pool = BackendPool(max_in_flight=4)
    pool.replace([("http://a", "a"), ("http://b", "b")])
    for backend in pool.backends:
        backend.record_probe(True)
    busy = pool.choose()
    busy.in_flight = 1
    assert pool.choose(least_outstanding=True) is not busy
    assert pool.choose(least_outstanding=True) is not busy
