"""MODELS: one pool of workers per model, each with its sidecars, its MODEL and its artifacts folder; the gateway
lists every pool and defaults to the first; a MODELS that cannot be served is refused naming its entry."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.exit_codes import MODEL_BROKEN, MODEL_BROKEN_LINE
from launcher.__main__ import build_children, example_routes, parse_args
from launcher.models import ModelsError, Pool, named, parse_models, read_names
from launcher.supervisor import Child, Supervisor
from tests.support import JAX_CACHE_DIR, REPO, free_port_run, start_process, stop_process, wait_until

REGRESSION = "worker.examples.regression:BayesianLinearRegression"
SMALL_MLP = "worker.examples.mlp:SmallMLP"
ARGS = argparse.Namespace(workers=5, port=9090, host="127.0.0.1", no_sidecars=False, gateway_processes=1)


def test_entries_give_the_model_then_an_artifacts_folder_and_a_worker_count() -> None:
    pools = parse_models(f"worker.examples.iris:IrisBayesianLogReg=2, {REGRESSION}@models/linreg, {SMALL_MLP}@m=3")
    assert [(pool.model, pool.workers, pool.artifacts) for pool in pools] == [
        ("worker.examples.iris:IrisBayesianLogReg", 2, None), (REGRESSION, 1, Path("models/linreg")),
        (SMALL_MLP, 3, Path("m")),
    ]
    assert pools[1].entry == f"MODELS entry 2 ({REGRESSION}@models/linreg)"


@pytest.mark.parametrize("text, entry", [("a:A=0", 1), ("a:A,", 2), ("a:A,b:B=two", 2), ("a:A=2@f", 1)])
def test_a_malformed_entry_is_refused_by_its_number(text: str, entry: int) -> None:
    with pytest.raises(ModelsError, match=f"MODELS entry {entry} "):
        parse_models(text)


def test_names_are_read_with_the_worker_s_loader_and_a_broken_entry_is_named() -> None:
    pools = read_names(parse_models(f"{REGRESSION}=2,{SMALL_MLP}"))
    assert [(pool.name, pool.workers) for pool in pools] == [("bayes-linreg", 2), ("mlp-small", 1)]
    with pytest.raises(ModelsError, match=r"MODELS entry 2 \(worker.examples.mlp:Nothing\): MODEL=.*not a subclass"):
        read_names(parse_models(f"{REGRESSION},worker.examples.mlp:Nothing"))
    with pytest.raises(ModelsError, match=r"MODELS entry 1 \(no.such.module:A\): MODEL=no.such.module:A: No module"):
        read_names(parse_models("no.such.module:A"))


def test_two_entries_of_one_model_name_are_refused() -> None:
    with pytest.raises(ModelsError, match="MODELS entry 2 .* serves 'mlp-small', as MODELS entry 1"):
        named(parse_models(f"{SMALL_MLP},{SMALL_MLP}=2"), ["mlp-small", "mlp-small"])


POOLS = [Pool(REGRESSION, 2, None, "bayes-linreg", "MODELS entry 1"),
         Pool(SMALL_MLP, 1, Path("m"), "mlp-small", "MODELS entry 2")]


def test_each_pool_s_workers_get_its_model_ports_in_turn_and_a_sidecar_each() -> None:
    children = {child.name: child for child in build_children(ARGS, [], environ={}, pools=POOLS)}
    workers = [children[f"worker-{i}"] for i in range(3)]
    assert "worker-3" not in children  # --workers is ignored
    assert [(w.env["PORT"], w.env["MODEL"], w.env.get("MODEL_ARTIFACTS"), w.model, w.group) for w in workers] == [
        ("9091", REGRESSION, None, "bayes-linreg", "worker bayes-linreg"),
        ("9092", REGRESSION, None, "bayes-linreg", "worker bayes-linreg"),
        ("9093", SMALL_MLP, "m", "mlp-small", "worker mlp-small"),
    ]
    assert [children[f"sidecar-{i}"].env["WORKER_URL"] for i in range(3)] == [
        "http://127.0.0.1:9091", "http://127.0.0.1:9092", "http://127.0.0.1:9093"]
    assert [children[f"sidecar-{i}"].status.model for i in range(3)] == ["bayes-linreg", "bayes-linreg", "mlp-small"]
    gateway = children["gateway"].env
    assert gateway["WORKERS"] == "127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093"
    assert gateway["DEFAULT_MODEL"] == "bayes-linreg"


def test_the_user_s_default_model_wins_and_without_models_nothing_changes() -> None:
    chosen = build_children(ARGS, [], environ={"DEFAULT_MODEL": "mlp-small"}, pools=POOLS)
    assert "DEFAULT_MODEL" not in next(c for c in chosen if c.name == "gateway").env
    single = build_children(ARGS, [], environ={})
    assert [c.name for c in single if c.group == "worker"] == [f"worker-{i}" for i in range(5)]
    assert all("MODEL" not in c.env and "DEFAULT_MODEL" not in c.env and c.status.model is None for c in single)


def test_the_default_model_s_example_goes_to_predict_the_others_to_their_route() -> None:
    assert example_routes(ARGS, POOLS, {}) == {
        "/predict": "http://127.0.0.1:9091", "/models/mlp-small/predict": "http://127.0.0.1:9093"}
    assert list(example_routes(ARGS, POOLS, {"DEFAULT_MODEL": "mlp-small"})) == [
        "/predict", "/models/bayes-linreg/predict"]
    assert example_routes(ARGS, None, {}) == {"/predict": "http://127.0.0.1:9091"}


def test_models_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MODELS", SMALL_MLP)
    assert parse_args([]).models == SMALL_MLP
    monkeypatch.setenv("MODELS", "")
    assert parse_args([]).models is None


async def test_a_model_that_cannot_start_stops_everything_naming_its_entry() -> None:
    says_broken = f"print({MODEL_BROKEN_LINE!r} + 'load failed'); raise SystemExit({MODEL_BROKEN})"
    child = Child("worker-2", [sys.executable, "-c", says_broken], {}, entry=f"MODELS entry 2 ({SMALL_MLP})")
    other = Child("worker-0", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    supervisor = Supervisor([child, other], stop_timeout_s=2)
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    assert supervisor.failure == (f"worker-2 (MODELS entry 2 ({SMALL_MLP})): {MODEL_BROKEN_LINE}load failed; "
                                  "stopping everything")


def _launch(tmp_path: Path, models: str) -> tuple[object, Path, int]:
    port = free_port_run(4)
    env = {"MODELS": models, "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "JAX_PLATFORMS": "cpu", "HEALTH_INTERVAL_S": "0.5",
           "DRAIN_S": "0.2", "ACCESS_LOG": "false", "JOBS_DIR": str(tmp_path / "jobs"), "FAILED_EXIT_DELAY_S": "0",
           "MODEL": "worker.examples.iris:IrisBayesianLogReg"}  # ignored: MODELS wins
    log = tmp_path / "launcher.log"
    argv = [sys.executable, "-m", "launcher", "--port", str(port), "--workers", "3", "--no-sidecars"]
    return start_process(argv, env, log), log, port


@pytest.mark.integration
def test_two_models_run_one_pool_each_and_the_status_file_names_them(tmp_path: Path) -> None:
    launcher, log, port = _launch(tmp_path, f"{REGRESSION},{SMALL_MLP}")
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
        text = log.read_text()
        assert launcher.poll() is None, text
        assert "NUM_WORKERS (--workers) and MODEL are ignored" in text.splitlines()[0]
        assert "2 worker(s)" in text
        assert f"{port}/predict -H 'Content-Type: application/json' -d '{{\"input_data\": [0.5, -1.0, 2.0]" in text
        assert "/models/mlp-small/predict -H 'Content-Type: application/json' -d '{\"input_data\": [5.1, 3.5" in text
        served = [httpx.get(f"http://127.0.0.1:{port + 1 + i}/health", timeout=5).json()["model_name"]
                  for i in range(2)]
        assert served == ["bayes-linreg", "mlp-small"]
        processes = json.loads((tmp_path / "jobs" / "processes.json").read_text())["processes"]
        assert {p["name"]: p["model"] for p in processes} == {
            "worker-0": "bayes-linreg", "worker-1": "mlp-small", "gateway": None}
    finally:
        stop_process(launcher, timeout_s=30)


@pytest.mark.integration
def test_a_broken_model_stops_the_launcher_naming_its_entry(tmp_path: Path) -> None:
    launcher, log, _ = _launch(tmp_path, f"{REGRESSION},tests.launcher.broken_model:BrokenLoad")
    try:
        wait_until(lambda: launcher.poll() is not None, 180, "the launcher to give up")
        assert launcher.returncode == 1
        last = log.read_text().strip().splitlines()[-1]
        assert "worker-1 (MODELS entry 2 (tests.launcher.broken_model:BrokenLoad)): the model cannot start" in last
    finally:
        stop_process(launcher, timeout_s=30)


def test_make_run_passes_models_only_when_set() -> None:
    def run_line(*assignments: str) -> str:
        done = subprocess.run(["make", "-n", "--no-print-directory", "run", *assignments], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "MODELS": ""})
        return done.stdout.strip().splitlines()[-1]

    assert run_line(f"MODELS={REGRESSION}=2,{SMALL_MLP}").endswith(f'--models "{REGRESSION}=2,{SMALL_MLP}"')
    assert "--models" not in run_line()
