"""Jobs on the real Iris model (by name): predictions through a worker process, and a NUTS training job that
registers its output as a model version."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest

from jobs.registry import Registry
from jobs.store import ArtifactStore
from tests.jobs.conftest import embedded_settings, finished, gateway, sidecar, wait_for_job

pytestmark = pytest.mark.integration


async def test_batch_predict_job_on_the_iris_model(iris_worker: str, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, iris_worker)
    rows = [{"input_data": [5.1, 3.5, 1.4, 0.2], "return_probabilities": True},
            {"input_data": [6.7, 3.0, 5.2, 2.3]}, {"input_data": [5.9, 3.0, 4.2, 1.5]}]
    async with gateway(settings) as client, sidecar(settings):
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": rows})).json()
        status = await wait_for_job(client, job["job_id"], finished, timeout_s=60)
        assert status["status"] == "succeeded", status
        output = (await client.get(status["result_url"])).json()["output"]
    assert [row["class_name"] for row in output] == ["setosa", "virginica", "versicolor"]
    assert len(output[0]["probabilities"]) == 3 and output[1]["probabilities"] is None


async def test_train_job_registers_a_new_model_version(iris_worker: str, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, iris_worker)
    options = {"num_warmup": 30, "num_samples": 20, "seed": 1}
    async with gateway(settings) as client, sidecar(settings):
        job = (await client.post("/jobs", json={"task": "train", "options": options})).json()
        status = await wait_for_job(client, job["job_id"], finished, timeout_s=120)
        assert status["status"] == "succeeded", status
        assert status["progress"] == {"done": 50, "total": 50}
        output = (await client.get(status["result_url"])).json()["output"]
    assert output["rows"] == 150 and output["model_name"] == "iris-bayes-logreg"
    assert output["files"] == ["posterior.npz"]
    registry = Registry.from_settings(settings)
    try:
        manifest = await registry.manifest("iris-bayes-logreg", output["version"])
        files = await registry.files("iris-bayes-logreg", output["version"])  # checked against the manifest
    finally:
        await registry.close()
    assert (manifest.source, manifest.job_id, manifest.trained_from) == ("train", job["job_id"],
                                                                         output["trained_from_version"])
    store = ArtifactStore.from_settings(settings)
    assert await store.get(store.key_for_uri(output["artifact_uri"] + "posterior.npz")) == files["posterior.npz"]
    with np.load(io.BytesIO(files["posterior.npz"]), allow_pickle=False) as npz:
        assert npz["W"].shape == (20, 4, 3) and npz["b"].shape == (20, 3)


async def test_train_job_refuses_bad_rows_and_options_of_the_served_model(iris_worker: str, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, iris_worker)
    async with gateway(settings) as client:
        while (await client.get("/gateway/health")).status_code != 200:  # the first probe
            await asyncio.sleep(0.05)
        for body, message in [
            ({"task": "train", "options": {"num_samples": 0}}, "options.num_samples: 0 is less than the minimum of 1"),
            ({"task": "train", "inputs": [{"input_data": [1.0, 2.0], "target": 1}]},
             "inputs[0].input_data: expected shape (4,), got (2,)"),
            ({"task": "train", "inputs": [{"input_data": [1.0, 2.0, 3.0, 4.0], "target": [1]}]},
             "inputs[0].target: expected target shape (), got (1,)"),
            ({"task": "train", "inputs": [{"input_data": [1.0, 2.0, 3.0, 4.0], "target": 1.5}]},
             "inputs[0].target: values do not fit INT32"),  # and Python's words for why
        ]:
            answer = await client.post("/jobs", json=body)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["message"].startswith(message)
