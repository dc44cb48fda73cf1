"""The GPU kit (``python -m bench.gpu``) runs end to end on the CPU, so it cannot rot between GPU loans.

It runs with ``JAX_PLATFORMS=cpu``, the tiny encoder and a fraction of a second
per point; the assertions are on structure and on nothing failing, never on a
timing. Its parts (the wheels it carries, the nvidia-smi parser, the verdicts)
are tested beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from bench.gpu import carry, summary, worker_time
from bench.gpu.__main__ import main
from bench.gpu.run import device_envs
from bench.gpu.utilisation import Sampler, find_reader, parse, summarise
from worker.contract import load_model_class

TINY = "worker.examples.encoder:TinyTransformerEncoder"


@pytest.mark.integration
def test_the_kit_measures_every_configuration_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    out = tmp_path / "gpu.json"
    results = main(["--model", TINY, "--batches", "1", "8", "--concurrency", "1", "4", "--duration", "0.3",
                    "--warmup", "0", "--inprocess-duration", "0.1", "--max-batch-size", "8", "--out", str(out)])
    assert json.loads(out.read_text())["points"] == results["points"]
    assert results["inprocess"]["platform"] == "cpu"
    assert [m["batch"] for m in results["inprocess"]["batches"]] == [1, 8]
    assert all(m["jit"]["rows_per_s"] > 0 for m in results["inprocess"]["batches"])
    configs = [(p["config"], p["concurrency"]) for p in results["points"]]
    assert configs == [(config, c) for config in ("direct", "gateway_per_gpu", "gateway_shared") for c in (1, 4)]
    for point in results["points"]:
        assert point["requests"] > 0 and point["errors"] == 0, point["error_kinds"]
        assert point["mean_batch_size"] >= 1 and point["limit_batch"] in (1, 8)
        assert point["gpu"] is None and point["gpu_busy_pct"] is None
        assert point["worker_time"]["model_call_ms_per_batch"] > 0 and point["worker_time"]["queue_wait_ms_mean"] >= 0
        workers = 1 if point["config"] != "gateway_shared" else 2
        expected = {f"worker{i}" for i in range(workers)} | ({"gateway"} if point["config"] != "direct" else set())
        assert set(point["cpu_ms_per_request"]) == expected
    assert set(results["compilations_after_ready"].values()) == {0}
    assert results["meta"]["gpus"] == 0 and results["meta"]["worker_env"]["MAX_BATCH_SIZE"] == "8"
    assert [t["pass"] for t in results["targets"]][1] is None  # no GPU to be busy
    # py-spy may be refused where ptrace is (a container): then the profile says why, and the run goes on.
    assert results["profile"]["concurrency"] == 4
    assert all("samples" in results["profile"][p] or "error" in results["profile"][p] for p in ("gateway", "worker"))
    table = out.with_suffix(".md").read_text()
    assert "| gateway + two workers sharing GPU 0 | 4 |" in table and "| 8 |" in table
    assert "Profile (py-spy, gateway + one worker per GPU, c=4" in table


def test_the_encoder_is_a_contract_valid_model_that_clips_token_ids() -> None:
    cls = load_model_class(TINY)
    model = cls()
    params = model.load(Path("no-artifacts-here"))
    rows = np.asarray([model.example, [-5] * cls.seq_len, [cls.vocab_size + 9] * cls.seq_len], np.int32)
    clipped = np.clip(rows, 0, cls.vocab_size - 1)
    predict = jax.jit(model.predict_batch)
    probabilities = np.asarray(predict(params, rows)["probabilities"])
    assert probabilities.shape == (3, cls.num_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, np.asarray(predict(params, clipped)["probabilities"]), rtol=1e-6)
    assert load_model_class("worker.examples.encoder").__name__ == "TransformerEncoder"


def test_nvidia_smi_lines_become_utilisation_per_gpu() -> None:
    samples = parse("0, 50, 1000\n0, 100, 1200\n1, [N/A], 10\nnot a line\n1, 20, 30\n")
    assert summarise(samples) == {
        "0": {"util_mean_pct": 75.0, "util_max_pct": 100.0, "memory_max_mib": 1200.0, "samples": 2},
        "1": {"util_mean_pct": 20.0, "util_max_pct": 20.0, "memory_max_mib": 30.0, "samples": 1},
    }
    assert summarise(parse("")) is None


def test_the_sampler_reads_on_a_thread_until_closed_and_without_a_gpu_records_nothing() -> None:
    with Sampler(interval_s=0.01, reader=lambda: "0, 40, 100\n1, 60, 200") as sampler:
        time.sleep(0.1)
    assert sampler.result["0"]["util_mean_pct"] == 40.0 and sampler.result["1"]["memory_max_mib"] == 200.0
    assert sampler.result["0"]["samples"] >= 2
    if find_reader() is None:
        with Sampler() as sampler:
            pass
        assert sampler.result is None


def test_without_nvml_each_sample_is_a_one_shot_nvidia_smi_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index,utilization.gpu,memory.used" ] && echo "0, 55, 1234"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as where nvidia-ml-py is not installed
    with Sampler(interval_s=0.01) as sampler:
        time.sleep(0.1)
    assert sampler.result["0"]["util_mean_pct"] == 55.0 and sampler.result["0"]["memory_max_mib"] == 1234.0


def test_worker_timings_come_from_the_histograms_summed_over_versions() -> None:
    page = ('worker_batch_compute_seconds_sum{version="1"} 0.5\nworker_batch_compute_seconds_sum{version="2"} 0.5\n'
            'worker_batch_compute_seconds_count{version="1"} 10\nworker_queue_wait_seconds_sum{version="1"} 2\n'
            'worker_queue_wait_seconds_count{version="1"} 1000\n# HELP worker_ready x\nworker_ready 1\n')
    before = [dict.fromkeys(worker_time.WANTED, 0.0)] * 2
    after = [worker_time.parse(page), dict.fromkeys(worker_time.WANTED, 0.0)]
    assert after[0]["worker_batch_compute_seconds_sum"] == 1.0
    assert worker_time.breakdown(before, after, 2.0) == {
        "model_call_ms_per_batch": 100.0, "in_model_call_share": 0.25, "queue_wait_ms_mean": 2.0}
    assert worker_time.breakdown(before, before, 2.0)["model_call_ms_per_batch"] is None


def test_the_profile_lines_name_the_parts_and_functions_or_why_there_is_none() -> None:
    profile = {"concurrency": 256, "rps": 1000.0,
               "gateway": {"samples": 10, "inclusive_share": {"proxy": 0.5},
                           "self_top": [{"function": "exchange (forwarder.py)", "share": 0.4}]},
               "worker": {"error": "Error: Permission denied\n"}}
    text = "\n".join(summary.profile_lines(profile))
    assert "proxy 50%" in text and "`exchange (forwarder.py)` 40%" in text
    assert "worker: no profile (Error: Permission denied)" in text


def _results(points: list[dict]) -> dict:
    inprocess = {"batches": [{"batch": b, "jit": {"rows_per_s": 100.0 * b}} for b in (1, 64, 256)]}
    return {"inprocess": inprocess, "points": points}


def test_the_verdicts_compare_with_the_limit_at_the_batch_reached() -> None:
    results = _results([
        {"config": "gateway_per_gpu", "concurrency": 64, "rows_per_s": 100.0, "mean_batch_size": 2.0},
        {"config": "gateway_per_gpu", "concurrency": 256, "rows_per_s": 15000.0, "mean_batch_size": 180.0,
         "gpu": {"0": {"util_mean_pct": 80.0}, "1": {"util_mean_pct": 50.0}}},
    ])
    summary.annotate(results)
    low, high = results["points"]
    assert (low["limit_batch"], low["served_share"]) == (1, 1.0)
    assert (high["limit_batch"], high["served_share"], high["gpu_busy_pct"]) == (256, 0.5859, 65.0)
    share, busy = summary.targets(results)
    assert (share["pass"], busy["pass"]) == (True, False)
    assert "c=256" in share["target"]


def test_workers_get_their_gpus_round_robin_and_a_memory_share_when_they_share() -> None:
    assert device_envs(2, ["0", "1"]) == [{"CUDA_VISIBLE_DEVICES": "0", "JAX_PLATFORMS": "cuda"},
                                          {"CUDA_VISIBLE_DEVICES": "1", "JAX_PLATFORMS": "cuda"}]
    shared = device_envs(2, ["0"], mem_fraction=0.4)
    assert {env["CUDA_VISIBLE_DEVICES"] for env in shared} == {"0"}
    assert {env["XLA_PYTHON_CLIENT_MEM_FRACTION"] for env in shared} == {"0.4"}
    assert device_envs(2, [], mem_fraction=0.4) == [{"JAX_PLATFORMS": "cpu"}] * 2


def test_the_carried_distributions_are_the_ones_installed_here() -> None:
    pins = carry.pinned()
    assert len(pins) == len(carry.DISTRIBUTIONS) and all("==" in pin for pin in pins)


def _wheel(folder: Path, package: str) -> Path:
    """A minimal pure-Python wheel holding one module that says its name."""
    path = folder / f"{package}-1.0-py3-none-any.whl"
    info = f"{package}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{package}/__init__.py", f"NAME = {package!r}\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_missing_packages_are_installed_from_the_carried_wheels_for_every_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "carried_probe")
    monkeypatch.setattr(carry, "MODULES", ("carried_probe",))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert carry.activate(wheels, site)[0] == "installed 1 wheels into site"
    child = subprocess.run([sys.executable, "-c", "import carried_probe; print(carried_probe.NAME)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert child.stdout.strip() == "carried_probe"
    assert carry.missing_modules() == []
    assert carry.activate(wheels, site) == []  # present now: nothing installed twice


def test_nothing_is_installed_where_the_stack_is_present(tmp_path: Path) -> None:
    assert carry.missing_modules() == []
    assert carry.activate(tmp_path / "no-wheels", tmp_path / "site") == []
    assert not (tmp_path / "site").exists()
