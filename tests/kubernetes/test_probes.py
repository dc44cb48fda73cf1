"""The probes ask the routes the processes really serve, and get the answers the probes expect.

The routes are taken from the rendered manifests and sent to the real apps (the worker with the
fake runtime of tests/worker/test_app.py, so no JAX): the worker's readiness is 503 until the
model is warm, its liveness answers before that and while a batch runs; the gateway is alive
without workers but not ready; the sidecar's /metrics is its metrics server's.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from starlette.testclient import TestClient

from tests.containers.support import REPO, services
from tests.kubernetes.support import containers, environment, one, overlays, render
from tests.support import free_port
from tests.worker.test_app import FakeRuntime, make_client, wait_ready

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _probe_paths(container: dict) -> dict[str, str]:
    paths = {}
    for probe in PROBES:
        if probe in container:
            get = container[probe]["httpGet"]
            declared = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert get["port"] in declared, f"{container['name']} {probe} on undeclared port {get['port']}"
            paths[probe] = get["path"]
    return paths


def _window_s(probe: dict) -> int:
    return probe["periodSeconds"] * probe["failureThreshold"]


class BusyRuntime(FakeRuntime):
    """A fake runtime whose model calls, once ``hold`` is set, block until the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False  # the start-up's own example call goes through
        self.computing = threading.Event()
        self.release = threading.Event()

    def infer(self, rows):
        if self.hold:
            self.computing.set()
            self.release.wait(10)
        return super().infer(rows)


@overlays
def test_worker_probes_readiness_is_model_warm_and_liveness_survives_warm_up_and_load(overlay: str) -> None:
    worker = containers(one(render(overlay), "Deployment", "worker"))["worker"]
    paths = _probe_paths(worker)
    assert set(paths) == set(PROBES)
    runtime = BusyRuntime()
    with make_client(runtime) as client:
        assert client.get(paths["startupProbe"]).status_code == 503, "started before the model is warm"
        assert client.get(paths["readinessProbe"]).status_code == 503, "ready before the model is warm"
        assert client.get(paths["livenessProbe"]).status_code == 200, "a compiling worker would be restarted"
        runtime.warm.set()
        wait_ready(client)
        runtime.hold = True
        predicting = threading.Thread(target=client.post, args=("/predict",), kwargs={"json": {"input_data": [1] * 4}})
        predicting.start()
        try:
            assert runtime.computing.wait(10)
            # A batch is on the device: the worker is busy, and still alive and ready.
            assert client.get(paths["livenessProbe"]).status_code == 200
            assert client.get(paths["readinessProbe"]).status_code == 200
        finally:
            runtime.release.set()
            predicting.join(10)


@overlays
def test_worker_startup_probe_allows_for_compilation(overlay: str) -> None:
    """At least the start period the compose healthcheck gives a first compilation, at most the sidecar's wait."""
    from jobs.settings import JobsSettings

    objects = render(overlay)
    pod = containers(one(objects, "Deployment", "worker"))
    compose_start = services(REPO / "docker-compose.yml")["worker"]["healthcheck"]["start_period"]
    window = _window_s(pod["worker"]["startupProbe"])
    assert window >= int(compose_start.removesuffix("s"))
    sidecar_wait = environment(objects, pod["sidecar"]).get(
        "WORKER_READY_TIMEOUT_S", JobsSettings.model_fields["worker_ready_timeout_s"].default)
    assert window <= float(sidecar_wait), "the sidecar would give up on a worker still allowed to start"
    # Liveness tolerates a long stall (a big batch, a slow device) before a restart.
    assert _window_s(pod["worker"]["livenessProbe"]) >= 60


@overlays
def test_gateway_is_alive_without_workers_and_ready_only_with_one(overlay: str, tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from jobs.settings import JobsSettings

    gateway = containers(one(render(overlay), "Deployment", "gateway"))["gateway"]
    paths = _probe_paths(gateway)
    assert set(paths) == set(PROBES)
    app = create_app(GatewaySettings(workers=[f"127.0.0.1:{free_port()}"], access_log=False),
                     JobsSettings(jobs_dir=tmp_path))
    with TestClient(app) as client:
        assert client.get(paths["startupProbe"]).status_code == 200
        assert client.get(paths["livenessProbe"]).status_code == 200, "no worker is no reason to restart a gateway"
        assert client.get(paths["readinessProbe"]).status_code == 503, "ready with no worker to send requests to"


@overlays
def test_sidecar_liveness_is_its_metrics_server(overlay: str) -> None:
    objects = render(overlay)
    sidecar = containers(one(objects, "Deployment", "worker"))["sidecar"]
    paths = _probe_paths(sidecar)
    assert set(paths) == {"livenessProbe"}, "the sidecar serves no traffic: nothing to be ready for"
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        assert httpx.get(f"http://127.0.0.1:{port}{paths['livenessProbe']}", timeout=5).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_probes_time_out_before_they_repeat() -> None:
    for overlay in ("cpu", "gpu"):
        for container in (c for w in render(overlay) if w["kind"] == "Deployment" for c in containers(w).values()):
            for probe in PROBES:
                if probe in container:
                    spec = container[probe]
                    assert spec["timeoutSeconds"] <= spec["periodSeconds"], f"{container['name']} {probe}"

