"""Which device each worker gets, with a faked ``nvidia-smi -L``."""

from __future__ import annotations

import argparse
import subprocess

from launcher.__main__ import build_children
from launcher.gpus import device_env, list_gpus

TWO_GPUS = (
    "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)\n"
    "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-66666666-7777-8888-9999-000000000000)\n"
)


def test_gpus_are_read_from_nvidia_smi() -> None:
    assert list_gpus(lambda argv: TWO_GPUS) == ["0", "1"]


def test_no_driver_means_no_gpus() -> None:
    def failing(argv: list[str]) -> str:
        raise subprocess.CalledProcessError(9, argv)

    assert list_gpus(failing) == []
    assert list_gpus(lambda argv: "No devices were found\n") == []


def test_each_worker_is_pinned_to_its_own_gpu() -> None:
    gpus = list_gpus(lambda argv: TWO_GPUS)
    assert [device_env(i, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["0", "1"]
    assert device_env(0, gpus)["JAX_PLATFORMS"] == "cuda"


def test_more_workers_than_gpus_share_them_round_robin() -> None:
    assert [device_env(i, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]


def test_without_gpus_workers_run_on_the_cpu() -> None:
    assert device_env(0, []) == {"JAX_PLATFORMS": "cpu"}


def test_the_launcher_wires_ports_devices_and_the_gateway() -> None:
    args = argparse.Namespace(workers=2, port=9090, host="127.0.0.1", no_sidecars=False, gateway_processes=1)
    children = {child.name: child for child in build_children(args, ["0", "1"])}
    assert children["worker-1"].env["PORT"] == "9092"
    assert children["worker-1"].env["CUDA_VISIBLE_DEVICES"] == "1"
    assert children["sidecar-1"].env["WORKER_URL"] == "http://127.0.0.1:9092"
    assert children["gateway"].env["WORKERS"] == "127.0.0.1:9091,127.0.0.1:9092"
    assert children["gateway"].stop_rank < children["worker-0"].stop_rank  # the gateway drains first
