"""The job benchmark runs (with a few jobs), so it cannot rot."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.jobs_bench import comparison_table, main, run_bulk_jobs_bench, run_jobs_bench, run_large_job_bench
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.jobs.conftest import gateway, sidecar


@pytest.mark.parametrize("wait", [True, False], ids=["result-wait", "status-polls"])
async def test_the_jobs_benchmark_runs(jobs_settings: JobsSettings, wait: bool) -> None:
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        result = await run_jobs_bench(str(client.base_url), jobs=20, concurrency=10, poll_s=0.1, timeout_s=60,
                                      wait=wait)
    assert result["succeeded"] == 20 and result["jobs_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"]


async def test_the_command_warms_up_first_and_counts_only_the_measured_jobs(
    jobs_settings: JobsSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        await asyncio.to_thread(main, ["--gateway", str(client.base_url), "--jobs", "6", "--warmup-jobs", "4"])
        listed = (await client.get("/jobs", params={"limit": 50})).json()["jobs"]
    result = json.loads(capsys.readouterr().out)["gateway"]
    assert result["jobs"] == result["succeeded"] == 6
    assert len(listed) == 10 and {job["status"] for job in listed} == {"succeeded"}


async def test_the_large_job_benchmark_runs_and_follows_a_presigned_result(jobs_settings: JobsSettings) -> None:
    """Every result is large here, so on the S3 store the result request answers with a redirect."""
    settings = jobs_settings.model_copy(update={"job_result_redirect_bytes": 0})
    store = ArtifactStore.from_settings(settings)
    loop = asyncio.get_running_loop()

    def upload(data: bytes) -> str:  # called from the benchmark's own loop, in its thread
        asyncio.run_coroutine_threadsafe(store.put("inputs/large.json", data), loop).result(30)
        return store.uri_for_key("inputs/large.json")

    async with gateway(settings) as client, sidecar(settings):
        result = await asyncio.to_thread(
            asyncio.run, run_large_job_bench(str(client.base_url), upload, rows_count=40, workers=1, chunk_rows=8))
    assert result["rows"] == 40 and result["job_rows_per_s"] > 0 and result["batch_predict_rows_per_s"] > 0


async def test_the_bulk_benchmark_submits_in_batches_and_checks_every_result(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        result = await run_bulk_jobs_bench(str(client.base_url), jobs=20, batch_size=8, submitters=2,
                                           concurrency=4, timeout_s=60)
        listed = (await client.get("/jobs", params={"limit": 50})).json()["jobs"]
    assert result["jobs"] == result["succeeded"] == 20 and result["batch_size"] == 8
    assert result["jobs_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"]
    assert len(listed) == 20 and {job["status"] for job in listed} == {"succeeded"}


def test_the_comparison_table_puts_every_path_against_celerys_best() -> None:
    def figures(jobs: int, rate: float, **extra: int) -> dict:
        return {"jobs": jobs, "jobs_per_s": rate, "p50_ms": 500.0, "p99_ms": 1500.0, **extra}

    results = {
        "rabbitmq-postgres": {**figures(1000, 600.0), "bulk": figures(10_000, 1200.0, batch_size=500)},
        "celery-redis": {"one_per_call": figures(1000, 300.0), "group": figures(10_000, 400.0, group_size=500)},
    }
    lines = comparison_table(results).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| ours (rabbitmq-postgres), one job per POST /jobs", "| ours (rabbitmq-postgres), POST /jobs/batch of 500",
        "| Celery (redis results), one task per apply_async", "| Celery (redis results), group of 500"]
    assert [line.split(" | ")[-1] for line in lines[2:]] == ["1.50 |", "3.00 |", "0.75 |", "1.00 |"]
    assert "| 10,000 | 1,200 | 0.50 s | 1.50 s |" in lines[3]
