"""The client and its CLI against a real stack: ``python -m launcher`` with a worker and its job sidecar.

Rows come from the served model's example in the gateway's OpenAPI document, so these tests
follow whichever model is served.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_client import (
    AsyncInferenceClient,
    ConflictError,
    InferenceClient,
    InvalidInputError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
)
from tests.support import JAX_CACHE_DIR, REPO, free_port_run, start_process, stop_process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.served_model]


@dataclass
class Stack:
    url: str
    row: Any  # an example row of the served model

    def rows(self, n: int) -> list[Any]:
        return [self.row] * n


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port_run(2)
    folder = tmp_path_factory.mktemp("client-stack")
    log = folder / "launcher.log"
    env = {
        "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "HEALTH_INTERVAL_S": "0.5", "JOBS_DIR": str(folder / "jobs"),
        "JOB_CHUNK_ROWS": "2", "JOB_TASK_MODULES": "tests.client.slow_tasks", "EMBEDDED_POLL_INTERVAL_S": "0.02",
    }
    launcher = start_process([sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
        assert launcher.poll() is None, log.read_text()
        document = httpx.get(f"{url}/openapi.json").json()
        example = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
        yield Stack(url, example["input_data"])
    finally:
        code = stop_process(launcher, timeout_s=20)
    assert code == 0, log.read_text()[-3000:]


def test_predict_and_batch_predict(stack: Stack) -> None:
    with InferenceClient(stack.url) as client:
        one = client.predict(stack.row, return_probabilities=True)
        many = client.batch_predict(stack.rows(5))
    assert one.prediction is not None and one.worker_id == "0" and one.inference_time_ms > 0
    assert [answer.prediction for answer in many] == [one.prediction] * 5


def test_a_numpy_row_is_the_same_row(stack: Stack) -> None:
    np = pytest.importorskip("numpy")
    with InferenceClient(stack.url) as client:
        assert client.predict(np.asarray(stack.row)).prediction == client.predict(stack.row).prediction


def test_a_row_of_the_wrong_shape_is_an_invalid_input_error(stack: Stack) -> None:
    with InferenceClient(stack.url) as client, pytest.raises(InvalidInputError) as caught:
        client.predict([stack.row, stack.row])
    error = caught.value
    assert error.status == 422 and error.code == "invalid_input"
    assert "input_data" in error.message and error.request_id


def test_a_batch_predict_job_through_submit_wait_result(stack: Stack) -> None:
    inputs = [{"input_data": row} for row in stack.rows(6)]
    with InferenceClient(stack.url) as client:
        expected = [answer.prediction for answer in client.batch_predict(stack.rows(6))]
        job = client.submit_job("batch_predict", inputs, idempotency_key="client-test-1")
        assert client.submit_job("batch_predict", inputs, idempotency_key="client-test-1").job_id == job.job_id
        done = client.wait(job.job_id, timeout=60, progress=False)
        result = client.result(job.job_id)
    assert done.status == "succeeded" and done.progress.done == done.progress.total == 6
    assert result.job_id == job.job_id and [row["prediction"] for row in result.output] == expected


def test_cancel_a_running_job(stack: Stack) -> None:
    with InferenceClient(stack.url) as client:
        job = client.submit_job("until_cancelled")
        with pytest.raises(ConflictError):
            client.result(job.job_id)
        cancelled = client.cancel(job.job_id)
        assert cancelled.status == "cancelled" or cancelled.cancel_requested
        with pytest.raises(JobCancelledError):
            client.wait(job.job_id, timeout=30, progress=False)
        assert client.cancel(job.job_id).status == "cancelled"


def test_finished_and_unknown_jobs_cannot_be_cancelled(stack: Stack) -> None:
    with InferenceClient(stack.url) as client:
        job = client.submit_job("batch_predict", [{"input_data": stack.row}])
        client.wait(job.job_id, timeout=60, progress=False)
        with pytest.raises(ConflictError) as caught:
            client.cancel(job.job_id)
        assert caught.value.code == "job_already_finished"
        with pytest.raises(NotFoundError):
            client.job_status("0" * 32)


def test_a_failed_job_is_retried_under_its_id(stack: Stack) -> None:
    with InferenceClient(stack.url) as client:
        job = client.submit_job("fails_first_run")
        with pytest.raises(JobFailedError):
            client.wait(job.job_id, timeout=60, progress=False)
        retried = client.retry_job(job.job_id)
        assert retried.job_id == job.job_id and retried.status == "queued"
        assert [run.error.code for run in retried.earlier_runs if run.error] == ["first_run"]
        done = client.wait(job.job_id, timeout=60, progress=False)
        assert done.status == "succeeded" and len(done.earlier_runs) == 1
        with pytest.raises(ConflictError) as caught:
            client.retry_job(job.job_id)
        assert caught.value.code == "job_not_failed"
    again = cli("--url", stack.url, "retry", job.job_id)
    assert again.returncode == 1 and "409 job_not_failed" in again.stderr


async def test_the_async_client(stack: Stack) -> None:
    async with AsyncInferenceClient(stack.url) as client:
        health = await client.health()
        one = await client.predict(stack.row)
        job = await client.submit_job("batch_predict", [{"input_data": row} for row in stack.rows(3)])
        await client.wait(job.job_id, timeout=60, progress=False)
        result = await client.result(job.job_id)
        info = await client.info()
    assert health.status == "healthy" and health.alive_backends == 1
    assert [row["prediction"] for row in result.output] == [one.prediction] * 3
    assert [backend.worker_id for backend in info.backends] == ["0"]


def test_the_readme_examples_run(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    section = (REPO / "README.md").read_text().split("## Python client\n", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(examples) == 2
    for example in examples:  # on this stack's URL, with the served model's example row
        code = re.sub(r"^row = .*$", f"row = {stack.row!r}", example.replace("http://127.0.0.1:8080", stack.url),
                      flags=re.MULTILINE)
        exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.count("worker_id='0'") == 4


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inference_client", *args], input=stdin, capture_output=True,
                          text=True, timeout=90, cwd=REPO, env={**os.environ, **(env or {})})


def test_the_cli(stack: Stack, tmp_path: Path) -> None:
    predicted = cli("predict", "--url", stack.url, "--probabilities", json.dumps(stack.row))
    assert predicted.returncode == 0, predicted.stderr
    prediction = json.loads(predicted.stdout)["prediction"]

    batch = cli("batch-predict", stdin=json.dumps(stack.rows(3)), env={"GATEWAY_URL": stack.url})
    assert batch.returncode == 0, batch.stderr
    assert [answer["prediction"] for answer in json.loads(batch.stdout)] == [prediction] * 3

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(row) for row in stack.rows(4)))
    submitted = cli("--url", stack.url, "submit", "--inputs", str(rows))
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    waited = cli("--url", stack.url, "wait", job_id, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "succeeded" and waited.stderr == ""  # no terminal: no bar
    result = cli("--url", stack.url, "result", job_id)
    assert [row["prediction"] for row in json.loads(result.stdout)["output"]] == [prediction] * 4
    status = cli("--url", stack.url, "status", job_id)
    assert json.loads(status.stdout)["progress"] == {"done": 4, "total": 4}
    health = cli("--url", stack.url, "health")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "healthy"


def test_the_cli_reports_errors_on_stderr_with_a_non_zero_status(stack: Stack) -> None:
    invalid = cli("--url", stack.url, "predict", json.dumps([stack.row, stack.row]))
    assert invalid.returncode == 1 and invalid.stdout == ""
    assert invalid.stderr.startswith("error: 422 invalid_input: input_data")
    missing = cli("--url", stack.url, "cancel", "0" * 32)
    assert missing.returncode == 1 and "404 job_not_found" in missing.stderr
    assert cli("--url", stack.url, "predict", "[1, 2").returncode == 2
    unreachable = cli("--url", "http://127.0.0.1:9", "--retries", "0", "health")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
