"""Which GPU each worker gets: one worker per GPU that ``nvidia-smi -L`` lists."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def list_gpus(run: Callable[[list[str]], str] | None = None) -> list[str]:
    """GPU indices from ``nvidia-smi -L``; empty where there is no NVIDIA driver."""
    if run is None:
        if shutil.which("nvidia-smi") is None:
            return []
        run = _run_nvidia_smi
    try:
        return _GPU_LINE.findall(run(["nvidia-smi", "-L"]))
    except (OSError, subprocess.SubprocessError):
        return []


def _run_nvidia_smi(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout


def device_env(worker_index: int, gpus: list[str]) -> dict[str, str]:
    """Environment pinning one worker: its own GPU, or the CPU when there is none.

    With more workers than GPUs, workers share GPUs round-robin.
    """
    if not gpus:
        return {"JAX_PLATFORMS": "cpu"}
    return {"CUDA_VISIBLE_DEVICES": gpus[worker_index % len(gpus)], "JAX_PLATFORMS": "cuda"}
