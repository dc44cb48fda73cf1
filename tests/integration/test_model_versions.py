"""Model versions end to end: ``python -m launcher`` with two workers under closed-loop load.

The served model's own parameters, perturbed (same shapes and dtypes) and written with its ``save()``, are
uploaded as version 2 and activated: no request fails, no worker compiles, and every answer to a request
sent after the activate call returned comes from version 2 (X-Model-Version). Then a rollback, a canary at
10 % (its measured share within a few points), a full switch again, and a worker killed after it: it comes
back serving the promoted version, never the files it was started with.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from common.model_headers import MODEL_VERSION_HEADER
from inference_client import ActivationResult, InferenceClient
from tests.support import JAX_CACHE_DIR, free_port_run, start_process, stop_process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.served_model]
CLIENTS = 16
#: Answers the canary's share is measured on: its standard deviation is then under 0.7 points.
CANARY_ANSWERS = 2000


@dataclass
class Stack:
    url: str
    workers: list[str]
    model_name: str
    example: dict  # a whole /predict body (the worker's /metadata example)
    log: Path


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    version: str | None


@dataclass
class Load:
    """CLIENTS clients sending /predict back to back; every answer kept with its send and receive times."""

    url: str
    example: dict
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            await asyncio.gather(*(self._client(client, stop) for _ in range(CLIENTS)))

    async def _client(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await client.post("/predict", json=self.example)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            self.answers.append(Answer(sent, time.monotonic(), response.status_code,
                                       response.headers.get(MODEL_VERSION_HEADER)))
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")

    def versions_sent_after(self, moment: float) -> set[str | None]:
        """The versions that answered requests sent after ``moment`` (failures count as None)."""
        return {answer.version if answer.status == 200 else None for answer in self.answers if answer.sent > moment}


def compilations(workers: list[str]) -> float:
    total = 0.0
    for url in workers:
        for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
            if line.startswith("worker_jit_compilations_total"):
                total += float(line.split()[-1])
    return total


def serving(stack: Stack) -> list[dict]:
    """What each worker's /health says it serves ({} while it does not answer: killed, restarting)."""
    states = []
    for url in stack.workers:
        try:
            states.append(httpx.get(f"{url}/health", timeout=10).json().get("serving", {}))
        except (httpx.HTTPError, ValueError):
            states.append({})
    return states


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("versions")
    port = free_port_run(3)
    env = {"JAX_CACHE_DIR": str(JAX_CACHE_DIR), "JAX_PLATFORMS": "cpu", "HEALTH_INTERVAL_S": "0.5",
           "MODEL_RECONCILE_S": "0.5", "ACCESS_LOG": "false", "JOBS_DIR": str(folder / "jobs")}
    log = folder / "launcher.log"
    launcher = start_process(
        [sys.executable, "-m", "launcher", "--workers", "2", "--port", str(port), "--no-sidecars"], env, log
    )
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
        assert launcher.poll() is None, log.read_text()[-3000:]
        workers = [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"]
        metadata = httpx.get(f"{workers[0]}/metadata", timeout=10).json()
        made = Stack(f"http://127.0.0.1:{port}", workers, metadata["name"], metadata["example"], log)
        wait_until(lambda: all(s.get("origin") == "registry" for s in serving(made)), 60,
                   "the first start: the start files registered as version 1 and served from the registry")
        yield made
    finally:
        stop_process(launcher, timeout_s=30)


def perturbed_version(folder: Path) -> list[Path]:
    """The served model's parameters, each floating array scaled by 1.05, written by its own save()."""
    from jax import tree_util

    from worker.contract import load_model_class
    from worker.settings import WorkerSettings

    settings = WorkerSettings()
    model = load_model_class(settings.model)()
    params = model.load(settings.model_artifacts)

    def scaled(array: object) -> object:
        array = np.asarray(array)
        return array * np.asarray(1.05, array.dtype) if np.issubdtype(array.dtype, np.floating) else array

    model.save(tree_util.tree_map(scaled, params), folder)
    return sorted(path for path in folder.iterdir() if path.is_file())


async def switch_under_load(call: Callable[[], ActivationResult]) -> tuple[ActivationResult, float]:
    """``call()`` (an activate or a rollback) in a thread while the load runs; its answer and when it returned."""
    answer = await asyncio.to_thread(call)
    returned = time.monotonic()
    await asyncio.sleep(1.0)  # answers to requests sent after it
    return answer, returned


async def test_upload_activate_rollback_canary_and_a_killed_worker_under_load(stack: Stack, tmp_path: Path) -> None:
    client = InferenceClient(stack.url, timeout=120, max_retries=0)
    uploaded = client.upload(stack.model_name, perturbed_version(tmp_path))
    assert uploaded.version == "2" and uploaded.source == "upload"
    load = Load(stack.url, stack.example)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    try:
        await asyncio.sleep(1.0)
        before = compilations(stack.workers)
        activated, returned = await switch_under_load(lambda: client.activate(stack.model_name, 2))
        assert [worker.ok for worker in activated.workers] == [True, True]
        assert [worker.compilations for worker in activated.workers] == [0, 0]
        assert load.versions_sent_after(returned) == {"2"}
        assert {s["active"] for s in serving(stack)} == {"2"}
        print(f"activate: {activated.took_ms:.0f} ms from the call to every worker serving version 2")

        rolled, returned = await switch_under_load(lambda: client.rollback(stack.model_name))
        assert rolled.active == "1" and load.versions_sent_after(returned) == {"1"}

        canary, returned = await switch_under_load(lambda: client.activate(stack.model_name, 2, 10))
        assert (canary.active, canary.canary, canary.canary_traffic) == ("1", "2", 10)
        async with asyncio.timeout(60):  # enough answers that 4 points are over 4 standard deviations
            while sum(a.sent > returned for a in load.answers) < CANARY_ANSWERS:
                await asyncio.sleep(0.5)
        versions = [a.version for a in load.answers if a.sent > returned and a.status == 200]
        share = versions.count("2") / len(versions)
        print(f"canary share: {share:.3f} of {len(versions)} answers")
        assert abs(share - 0.10) < 0.04 and set(versions) == {"1", "2"}

        promoted, returned = await switch_under_load(lambda: client.activate(stack.model_name, 2))
        assert promoted.active == "2" and promoted.canary is None
        assert load.versions_sent_after(returned) == {"2"}
        assert compilations(stack.workers) == before

        info = httpx.get(f"{stack.url}/gateway/info", timeout=10).json()
        worker_0 = next(entry for entry in info["processes"] if entry["name"] == "worker-0")
        os.kill(worker_0["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: httpx.get(f"{stack.url}/gateway/health", timeout=5)
                                .json()["alive_backends"] == 2 and serving(stack)[0].get("origin") == "registry",
                                120, "worker-0 back, serving the registry's state")
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await running
        client.close()
    assert serving(stack)[0]["active"] == "2"
    assert load.versions_sent_after(killed_at) == {"2"}  # never its start files
    assert {a.version for a in load.answers if a.sent > returned} == {"2"}
    assert load.failures == [], load.failures[:5]


def test_tritonclient_lists_unloads_and_loads_versions_of_the_real_stack(stack: Stack) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(stack.url.removeprefix("http://"))
    try:
        active = httpx.get(f"{stack.url}/models", timeout=10).json()["models"][0]["active"]
        index = client.get_model_repository_index()
        assert {"name": stack.model_name, "version": active, "state": "READY", "reason": ""} in index
        assert all(entry["state"] == "UNAVAILABLE" for entry in index if entry["version"] != active)
        assert "model_repository" in client.get_server_metadata()["extensions"]

        client.unload_model(stack.model_name)
        unloaded = httpx.post(f"{stack.url}/predict", json=stack.example, timeout=10)
        assert unloaded.status_code == 404 and unloaded.json()["error"]["code"] == "model_unloaded"
        assert httpx.get(f"{stack.url}/gateway/health", timeout=10).status_code == 200  # the workers are fine
        entry = next(e for e in client.get_model_repository_index() if e["version"] == active)
        assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")

        client.load_model(stack.model_name)
        loaded = httpx.post(f"{stack.url}/predict", json=stack.example, timeout=10)
        assert loaded.status_code == 200 and loaded.headers[MODEL_VERSION_HEADER] == active
        assert {"name": stack.model_name, "version": active, "state": "READY", "reason": ""} in \
            client.get_model_repository_index()
    finally:
        client.close()
