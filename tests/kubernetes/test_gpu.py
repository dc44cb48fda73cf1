"""The GPU overlay gives each worker pod exactly one GPU, on the GPU pool; the CPU overlay none."""

from __future__ import annotations

from tests.containers.support import REPO, services
from tests.kubernetes.support import containers, environment, one, render, workloads

GPU = "nvidia.com/gpu"


def _gpus(container: dict) -> dict[str, int]:
    resources = container.get("resources", {})
    return {bound: int(resources[bound][GPU]) for bound in ("requests", "limits") if GPU in resources.get(bound, {})}


def test_each_gpu_worker_pod_has_exactly_one_gpu_and_nothing_else_has_one() -> None:
    objects = render("gpu")
    worker = one(objects, "Deployment", "worker")
    pod = containers(worker)
    assert _gpus(pod["worker"]) == {"limits": 1}, "one GPU per worker (a request, if set, must equal the limit)"
    assert _gpus(pod["sidecar"]) == {}, "the sidecar trains on the CPU"
    for init in worker["spec"]["template"]["spec"].get("initContainers", []):
        assert _gpus(init) == {}, init["name"]
    for workload in workloads(objects):
        if workload is not worker:
            assert all(_gpus(c) == {} for c in containers(workload).values()), workload["metadata"]["name"]


def test_gpu_workers_run_on_the_gpu_pool_with_the_cuda_image_and_settings() -> None:
    objects = render("gpu")
    spec = one(objects, "Deployment", "worker")["spec"]["template"]["spec"]
    assert spec["nodeSelector"], "GPU pods need the GPU pool's label"
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    pod = containers(one(objects, "Deployment", "worker"))
    compose = services(REPO / "docker-compose.gpu.yml")
    compose_worker = compose["worker-gpu0"]["environment"]
    compose_sidecar = compose["sidecar"]["environment"]
    worker_env, sidecar_env = environment(objects, pod["worker"]), environment(objects, pod["sidecar"])
    for name in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES"):
        assert worker_env[name] == compose_worker[name], name
        assert sidecar_env[name] == compose_sidecar[name], name
    image = compose["worker-gpu0"]["image"].split(":")[0]
    assert {c["image"].rpartition(":")[0] for c in pod.values()} == {image}


def test_the_cpu_overlay_asks_for_no_gpu_and_runs_jax_on_the_cpu() -> None:
    objects = render("cpu")
    for workload in workloads(objects):
        spec = workload["spec"]["template"]["spec"]
        assert all(_gpus(c) == {} for c in spec["containers"]), workload["metadata"]["name"]
        assert "nodeSelector" not in spec and "tolerations" not in spec
    pod = containers(one(objects, "Deployment", "worker"))
    assert {environment(objects, c)["JAX_PLATFORMS"] for c in pod.values()} == {"cpu"}
