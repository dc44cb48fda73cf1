"""docker-compose.gpu.yml: one worker per device, and otherwise the CPU system."""

from __future__ import annotations

import json
import re

from tests.containers.support import REPO, built_from, load_compose, role, services

GPU_FILE = REPO / "docker-compose.gpu.yml"


def test_gpu_stack_runs_one_worker_per_device() -> None:
    compose = services(GPU_FILE)
    workers = {name: s for name, s in compose.items() if role(s) == "worker"}
    assert len(workers) >= 2 and all(re.fullmatch(r"worker-gpu\d+", name) for name in workers)
    device_ids = []
    for name, service in workers.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device["device_ids"] == [name.removeprefix("worker-gpu")], f"{name} reserves {device['device_ids']}"
        device_ids += device["device_ids"]
        environment = service["environment"]
        # Inside the container the one reserved GPU is CUDA device 0, whatever its host index.
        assert environment["CUDA_VISIBLE_DEVICES"] == "0"
        assert environment["JAX_PLATFORMS"] == "cuda"
        assert environment["WORKER_ID"] == name.removeprefix("worker-")
        assert built_from(service) == "worker-gpu.Dockerfile"
        assert "worker" in service["networks"]["default"]["aliases"], "Prometheus finds workers by this name"
    assert len(set(device_ids)) == len(device_ids)
    assert compose["gateway"]["environment"]["WORKERS"] == ",".join(f"{name}:8000" for name in workers)
    # The sidecars train on the CPU and leave every GPU to the workers.
    sidecar = compose["sidecar"]
    assert sidecar["environment"]["JAX_PLATFORMS"] == "cpu"
    assert "resources" not in sidecar.get("deploy", {})


def test_gpu_file_is_the_cpu_system_with_other_workers() -> None:
    cpu, gpu = load_compose(REPO / "docker-compose.yml"), load_compose(GPU_FILE)
    assert cpu["volumes"] == gpu["volumes"]
    for name in ["rabbitmq", "redis", "minio", "createbuckets", "prometheus", "grafana"]:
        assert cpu["services"][name] == gpu["services"][name], f"{name} differs between the CPU and GPU files"

    def without_workers(gateway: dict) -> dict:
        gateway = json.loads(json.dumps(gateway))
        gateway["environment"].pop("WORKERS")
        gateway["depends_on"] = {k: v for k, v in gateway["depends_on"].items() if not k.startswith("worker")}
        return gateway

    assert without_workers(cpu["services"]["gateway"]) == without_workers(gpu["services"]["gateway"])
