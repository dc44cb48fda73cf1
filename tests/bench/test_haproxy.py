"""The HAProxy anchor of ``make bench``: its configuration, HAProxy proxying to a real worker, and a tiny
benchmark run that measures it beside the gateway. Structure only, never a timing.

Tests that run haproxy skip where it is not installed (scripts/install-system-deps.sh installs it; CI runs
that script first).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import haproxy
from bench.__main__ import main
from bench.loadgen import predict_body, run_python

needs_haproxy = pytest.mark.skipif(
    haproxy.find_haproxy() is None, reason="haproxy is not installed (scripts/install-system-deps.sh installs it)")


def test_the_configuration_balances_round_robin_on_one_thread_and_reuses_connections(tmp_path: Path) -> None:
    text = haproxy.config(8080, ["127.0.0.1:9001", "127.0.0.1:9002"])
    lines = [line.strip() for line in text.splitlines()]
    for expected in ("nbthread 1", "balance roundrobin", "http-reuse always", "bind 127.0.0.1:8080",
                     "server w0 127.0.0.1:9001", "server w1 127.0.0.1:9002"):
        assert expected in lines
    if haproxy.find_haproxy():
        path = tmp_path / "haproxy.cfg"
        path.write_text(text)
        check = subprocess.run([haproxy.find_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_the_anchor_is_measured_at_one_and_64_clients_of_those_asked_for() -> None:
    assert haproxy.concurrencies([1, 16, 64, 256]) == [1, 64]
    assert haproxy.concurrencies([16, 256]) == [16, 256]


def _run(config: str, concurrency: int, rps: float, p50: float) -> dict:
    return {"model": "heavy", "config": config, "concurrency": concurrency, "rps": rps, "p50_ms": p50,
            "p99_ms": 3 * p50}


def test_the_anchor_compares_the_gateway_with_haproxy_and_the_hop_each_adds_to_a_lone_request() -> None:
    runs = [_run("direct_batch", 1, 1000, 0.9), _run("gateway_2", 1, 600, 1.6), _run("haproxy_2", 1, 700, 1.3),
            _run("direct_batch", 64, 3000, 20), _run("gateway_2", 64, 6400, 10), _run("haproxy_2", 64, 6000, 11)]
    lone, loaded = haproxy.anchor({"runs": runs})
    assert (lone["gateway_added_p50_ms"], lone["haproxy_added_p50_ms"]) == (0.7, 0.4)
    assert loaded["rps_ratio"] == round(6400 / 6000, 3) and "gateway_added_p50_ms" not in loaded
    assert "HAProxy 0.400 ms" in haproxy.lines([lone])[0]
    assert haproxy.markdown([]) == "" and haproxy.markdown([lone, loaded]).count("\n- ") == 2


@needs_haproxy
@pytest.mark.integration
def test_haproxy_proxies_to_a_real_worker(running_worker: str, tmp_path: Path) -> None:
    address = running_worker.removeprefix("http://")
    with haproxy.HAProxy("haproxy", [address], tmp_path) as proxy:
        before = proxy.cpu_seconds()
        result = run_python(f"{proxy.url}/predict", predict_body(f"{running_worker}/predict"), 2, 0.3)
        assert proxy.cpu_seconds() >= before
    assert result.requests > 0 and result.errors == 0, result.error_kinds
    assert (tmp_path / "haproxy.cfg").is_file()


@needs_haproxy
@pytest.mark.integration
def test_make_bench_measures_haproxy_beside_the_gateway(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    results = main(["--models", "heavy", "--configs", "direct_batch", "gateway_2", "haproxy_2", "--concurrency",
                    "1", "4", "--duration", "0.3", "--warmup", "0", "--repeat", "1", "--inprocess-duration", "0.1",
                    "--no-clients", "--no-docs", "--out", str(out)])
    proxied = [run for run in results["runs"] if run["config"] == "haproxy_2"]
    assert [run["concurrency"] for run in proxied] == [1]  # 4 is no anchor count: only 1 of those asked
    assert all(run["errors"] == 0 and run["requests"] > 0 for run in proxied)
    assert set(proxied[0]["cpu_ms_per_request"]) == {"gateway", "worker0", "worker1"}
    [lone] = results["haproxy_anchor"]
    assert {"gateway_added_p50_ms", "haproxy_added_p50_ms", "rps_ratio"} <= lone.keys()
