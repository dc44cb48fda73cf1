"""Helpers for tests that run real processes: free ports, waiting, clean-up."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from bench.stack import terminate as stop_process  # noqa: F401 - the tests' name for it

REPO = Path(__file__).resolve().parent.parent
#: One XLA compilation cache for every test process: restarts skip compilation.
JAX_CACHE_DIR = REPO / ".cache" / "jax-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_run(length: int) -> int:
    """A first port such that ``length`` consecutive ports are free."""
    for _ in range(200):
        first = free_port()
        if first + length > 65535:
            continue
        try:
            for port in range(first, first + length):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no run of {length} free ports")


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``condition`` (process start-up only; tests wait on events otherwise)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_process(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
            start_new_session=True,
        )


def worker_env(port: int, worker_id: str = "0", **extra: str) -> dict[str, str]:
    return {
        "WORKER_ID": worker_id, "HOST": "127.0.0.1", "PORT": str(port),
        "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "JAX_PLATFORMS": "cpu", **extra,
    }


