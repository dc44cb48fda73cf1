"""A few seconds of the benchmark against a real worker, so `make bench` cannot rot.

Asserts the structure of the results and that nothing failed; never a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import orjson
import pytest

from bench import report
from bench.__main__ import CONFIGS, Runner, keyed_env, main
from bench.inprocess_runner import run_inprocess
from bench.loadgen import LoadResult, binary_rows_body, infer_url, predict_body, request_body, run_python
from bench.stack import Gateway
from common import binary_rows

pytestmark = pytest.mark.integration

POINT_KEYS = {"model", "config", "concurrency", "duration_s", "requests", "rps", "p50_ms", "p95_ms", "p99_ms",
              "errors", "error_kinds", "loadgen", "loadgen_cpu"}


def test_url_mode_writes_results(running_worker: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    results = main(["--url", f"{running_worker}/predict", "--concurrency", "1", "4", "--duration", "1",
                    "--warmup", "0", "--repeat", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["runs"] == results["runs"]
    assert [run["concurrency"] for run in saved["runs"]] == [1, 4]
    for run in saved["runs"]:
        assert POINT_KEYS <= run.keys()
        assert run["errors"] == 0, run["error_kinds"]
        assert run["requests"] > 0
        assert len(run["repeats"]) == 2
    assert saved["meta"]["machine"]["nproc"] >= 1


def test_python_load_generator(running_worker: str) -> None:
    result = run_python(f"{running_worker}/predict", predict_body(f"{running_worker}/predict"), 2, 0.3)
    assert result.requests > 0 and result.errors == 0, result.error_kinds


def test_python_load_generator_on_the_protocol_route(running_worker: str) -> None:
    url = infer_url(running_worker)
    result = run_python(url, request_body(url), 2, 0.3)
    assert result.requests > 0 and result.errors == 0, result.error_kinds


def test_batch_predict_and_infer_bodies_carry_the_rows_asked_for(running_worker: str) -> None:
    rows = orjson.loads(request_body(f"{running_worker}/batch_predict", 64))
    assert len(rows) == 64 and rows[0] == orjson.loads(predict_body(f"{running_worker}/predict"))
    [tensor] = orjson.loads(request_body(infer_url(running_worker), 3))["inputs"]
    assert tensor["shape"][0] == 3
    with pytest.raises(ValueError, match="one row per request"):
        request_body(f"{running_worker}/predict", 2)
    result = run_python(f"{running_worker}/batch_predict", request_body(f"{running_worker}/batch_predict", 64), 2, 0.3)
    assert result.requests > 0 and result.errors == 0, result.error_kinds


def test_python_load_generator_on_binary_rows(running_worker: str) -> None:
    url = f"{running_worker}/batch_predict"
    result = run_python(url, binary_rows_body(url, 8), 2, 0.3, content_type=binary_rows.CONTENT_TYPE)
    assert result.requests > 0 and result.errors == 0, result.error_kinds


def test_a_gateway_of_two_processes_starts_both_on_one_port_and_serves(running_worker: str, tmp_path: Path) -> None:
    address = running_worker.removeprefix("http://")
    with Gateway("gw", [address], tmp_path, processes=2) as gateway:
        before = gateway.cpu_seconds_each()
        result = run_python(f"{gateway.url}/predict", predict_body(f"{running_worker}/predict"), 16, 1.0)
        used = [a - b for a, b in zip(gateway.cpu_seconds_each(), before, strict=True)]
    assert result.requests > 0 and result.errors == 0, result.error_kinds
    assert len(used) == 2
    assert sorted(tmp_path.glob("gw-*.log")) == [tmp_path / "gw-0.log", tmp_path / "gw-1.log"]


@pytest.mark.parametrize("counting", ["1", "0"])
def test_a_keyed_gateway_takes_only_the_key_the_load_sends_and_counts_usage_as_told(
    running_worker: str, tmp_path: Path, counting: str
) -> None:
    address, body = running_worker.removeprefix("http://"), predict_body(f"{running_worker}/predict")
    auth = {"Authorization": "Bearer bench-key"}
    with Gateway("gw", [address], tmp_path, env=keyed_env("bench-key", counting, tmp_path / "jobs")) as gateway:
        keyless = httpx.post(f"{gateway.url}/predict", content=body, timeout=10)
        keyed = run_python(f"{gateway.url}/predict", body, 2, 0.5, headers=auth)
        usage = httpx.get(f"{gateway.url}/usage", headers=auth, timeout=10).raise_for_status().json()
    assert keyless.status_code == 401
    assert keyed.requests > 0 and keyed.errors == 0, keyed.error_kinds  # the rate limit is off
    assert usage["totals"]["requests"] == (keyed.requests if counting == "1" else 0)


def test_the_keyed_configurations_run_at_one_and_64_clients_and_compare_usage_counting(tmp_path: Path) -> None:
    results = main(["--models", "default", "--configs", "gateway_2", "gateway_2_keys", "gateway_2_keys_uncounted",
                    "--concurrency", "1", "2", "--duration", "1", "--warmup", "0", "--repeat", "1",
                    "--inprocess-duration", "0.1", "--no-docs", "--out", str(tmp_path / "results.json")])
    assert [(run["config"], run["concurrency"]) for run in results["runs"]] == [
        ("gateway_2", 1), ("gateway_2", 2), ("gateway_2_keys", 1), ("gateway_2_keys_uncounted", 1)]
    for run in results["runs"]:
        assert run["errors"] == 0, run["error_kinds"]  # a key not sent would be 401s
    [row] = results["usage_counting"]
    assert (row["model"], row["concurrency"]) == ("default", 1)
    assert row["counting_ms"] is not None and row["key_check_ms"] is not None
    assert report.usage_counting_lines(results)[0].startswith("default, c=1: counting usage costs")


@pytest.mark.parametrize("module", ["gateway", "bench.httpx_gateway"])
def test_gateways_of_the_client_comparison(running_worker: str, tmp_path: Path, module: str) -> None:
    address = running_worker.removeprefix("http://")
    with Gateway("gw", [address], tmp_path, module=module) as gateway:
        result = run_python(f"{gateway.url}/predict", predict_body(f"{running_worker}/predict"), 2, 0.3)
    assert result.requests > 0 and result.errors == 0, result.error_kinds


def test_inprocess_limit_runs() -> None:
    limit = run_inprocess("worker.model", 8, 0.1)
    assert limit["batch"] == 8
    assert limit["jit"]["rows_per_s"] > 0 and limit["runtime"]["rows_per_s"] > 0
    assert limit["jit"]["cpu_ms_per_row"] > 0 and limit["runtime"]["cpu_ms_per_row"] > 0


def _point(model: str, config: str, concurrency: int) -> dict:
    load = LoadResult(concurrency, 1.0, 100, 100.0, 1.0, 2.0, 3.0, 1.5, 4.0, {"non_2xx": 0}, 0, 0.05)
    rows = 64 if config.endswith("batch_predict") else 1
    cpu = {"worker0": 0.2 * rows} | ({"gateway": 0.25 * rows} if config.startswith("gateway") else {})
    point = {"model": model, "config": config, "mean_batch_size": 1.0, "rows_per_request": rows,
             "rows_per_s": 100.0 * rows, "cpu_ms_per_request": cpu, **load.to_dict()}
    if config == "gateway_2_procs":
        point["gateway_cpu_share"] = [0.6, 0.4]
    return point


def test_report_targets_markdown_and_plot(tmp_path: Path) -> None:
    runs = [_point("heavy", config, c) for config in CONFIGS for c in (1, 64)]
    machine = {"nproc": 2, "cpu": "cpu", "memory_gib": 1.0, "os": "Linux", "python": "3", "packages": {},
               "wrk": None, "commit": "abc", "tree_dirty": False, "loadavg_at_start": [0.0, 0.0, 0.0]}
    results = {
        "runs": runs,
        "inprocess": {"heavy": {"batch": 64, "jit": {"rows_per_s": 1000.0, "ms_per_call": 64.0},
                                "runtime": {"rows_per_s": 900.0}}},
        "client_comparison": [{"client": "aiohttp", **runs[-1]}],
        "meta": {"started": "now", "elapsed_s": 1.0, "command": "python -m bench", "machine": machine,
                 "duration_s": 1.0, "warmup_s": 0.0, "concurrency": [1, 64], "loadgen": "python",
                 "worker_env": {}, "gateway_env": {}},
    }
    results["compilations_after_ready"] = {"heavy-w0": 0, "heavy-w1": 0}
    results["targets"] = report.targets(results)
    results["protocol"] = report.protocol_ratios(results)
    results["gateway_capacity"] = report.gateway_capacity(results)
    results["usage_counting"] = report.usage_counting(results)
    assert [(r["where"], r["concurrency"], r["ratio"]) for r in results["protocol"]] == [
        ("worker direct", 1, 1.0), ("worker direct", 64, 1.0), ("gateway + 1 worker", 1, 1.0),
        ("gateway + 1 worker", 64, 1.0)]
    assert {t["pass"] for t in results["targets"]} <= {True, False}
    assert len(results["targets"]) == 10
    by_name = {t["target"].split(",")[0]: t for t in results["targets"]}
    assert by_name["gateway CPU per proxied single-row request"]["value"] == 0.25
    assert by_name["XLA compilations after ready"]["pass"] is True
    capacity = {r["config"]: r for r in results["gateway_capacity"]}
    assert capacity["gateway_2"]["requests_per_core_s"] == 4000  # 1000 / 0.25 ms
    assert capacity["gateway_1_batch_predict"]["gateway_cpu_ms_per_row"] == 0.25
    assert capacity["gateway_2_procs"]["cpu_share"] == [0.6, 0.4]
    assert len(report.capacity_lines(results)) == 3
    assert [(r["concurrency"], r["counting_ms"], r["key_check_ms"]) for r in results["usage_counting"]] == [
        (1, 0.0, 0.0), (64, 0.0, 0.0)]
    assert report.usage_counting_lines(results)[1] == (
        "heavy, c=64: counting usage costs +0.000 ms of gateway CPU per request (0.250 ms counted, 0.250 ms not, +0%); "
        "with no key, (d): 0.250 ms, so the key's check costs +0.000 ms")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nprose\n\n{report.BEGIN}\nold\n{report.END}\n\nmore prose\n")
    report.update_doc(doc, report.markdown(results))
    text = doc.read_text()
    assert "prose" in text and "more prose" in text and "old" not in text
    assert "(d) gateway + 2 workers" in text and "/v2 infer req/s" in text
    assert "(e) gateway processes + 2 workers" in text and "req/s per gateway core" in text and "| 6,400 |" in text
    assert "(g') gateway + 2 workers, an API key, usage not counted" in text and "counting (g) - (g')" in text
    report.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


class _Draining(Gateway):
    """A gateway that still proxies what the last run abandoned for ``polls`` more polls (no process)."""

    def __init__(self, polls: int) -> None:  # no socket, no process: only in_flight() is asked
        self.polls = polls

    def in_flight(self) -> float:
        self.polls -= 1
        return float(max(self.polls, 0))


class _Batching:
    """A worker still computing the last run's requests for ``batches`` more polls."""

    def __init__(self, batches: int) -> None:
        self.count, self.batches = 0.0, batches

    def metric_sums(self) -> dict[str, float]:
        if self.batches > 0:
            self.batches, self.count = self.batches - 1, self.count + 1
        return {"worker_batch_size_count": self.count}


def test_a_run_starts_once_the_gateway_proxies_nothing_and_the_workers_batch_counts_stop() -> None:
    gateway, worker = _Draining(polls=3), _Batching(batches=5)
    Runner.settle([worker], gateway, timeout_s=5.0)  # type: ignore[list-item]
    assert gateway.polls <= 0 and worker.batches == 0
    stuck = _Draining(polls=10**6)
    Runner.settle([], stuck, timeout_s=0.3)  # gives up at its deadline: the run goes on, and says what it got
    assert stuck.polls > 0
