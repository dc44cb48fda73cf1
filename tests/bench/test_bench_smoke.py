"""A few seconds of the benchmark against a real worker, so `make bench` cannot rot.

Asserts the structure of the results and that nothing failed; never a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import main
from bench.inprocess_runner import run_inprocess
from bench.loadgen import LoadResult, batch_body, infer_url, predict_body, request_body, run_python
from bench.stack import Gateway

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


@pytest.mark.parametrize("binary", [False, True])
def test_python_load_generator_on_batches(running_worker: str, binary: bool) -> None:
    body, content_type = batch_body(f"{running_worker}/predict", 8, binary)
    result = run_python(f"{running_worker}/batch_predict", body, 2, 0.3, content_type=content_type)
    assert result.requests > 0 and result.errors == 0, result.error_kinds


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


def _point(model: str, config: str, concurrency: int) -> dict:
    load = LoadResult(concurrency, 1.0, 100, 100.0, 1.0, 2.0, 3.0, 1.5, 4.0, {"non_2xx": 0}, 0, 0.05)
    return {"model": model, "config": config, "mean_batch_size": 1.0, **load.to_dict()}


def test_report_targets_markdown_and_plot(tmp_path: Path) -> None:
    runs = [_point("heavy", config, c) for config in ("direct_nobatch", "direct_batch", "gateway_1", "gateway_1_v2",
                                                      "gateway_2") for c in (1, 64)]
    runs.append({**_point("heavy", "batch_binary", 8), "rows_per_request": 64,
                 "cpu_ms_per_request": {"worker0": 3.2}})
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
    results["targets"] = report.targets(results)
    results["protocol"] = report.protocol_ratios(results)
    assert [(r["concurrency"], r["ratio"]) for r in results["protocol"]] == [(1, 1.0), (64, 1.0)]
    assert {t["pass"] for t in results["targets"]} <= {True, False}
    assert len(results["targets"]) == 7
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nprose\n\n{report.BEGIN}\nold\n{report.END}\n\nmore prose\n")
    report.update_doc(doc, report.markdown(results))
    text = doc.read_text()
    assert "prose" in text and "more prose" in text and "old" not in text
    assert "(d) gateway + 2 workers" in text and "/v2 infer req/s" in text
    assert [(r["config"], r["rows_per_s"], r["cpu_ms_per_row"]) for r in report.batch_rows(results)] == [
        ("batch_binary", 6400.0, 0.05)]
    assert "CPU ms/row worker" in text
    report.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
