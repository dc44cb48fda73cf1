"""Helpers for tests that run real processes: free ports, waiting, clean-up."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bench.example_rows import rows_near  # noqa: F401 - the tests use it from here too
from bench.stack import terminate as stop_process  # noqa: F401 - the tests' name for it
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
#: One XLA compilation cache for every test process: restarts skip compilation.
JAX_CACHE_DIR = REPO / ".cache" / "jax-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedApp:
    """An ASGI app served by uvicorn on a free loopback port, on a thread of this process: ``start`` returns once
    it accepts, ``stop`` asks it to finish and waits. ``port``: one picked already (an app that must know it)."""

    def __init__(self, app: Any, name: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._server.started:  # start-up only
            threading.Event().wait(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


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


def served_model() -> str:
    """The model a worker the tests start serves unless told otherwise: the MODEL setting (worker/model.py when
    unset), so a test that names it serves what the user serves, however they chose it."""
    return WorkerSettings().model


def worker_env(port: int, worker_id: str = "0", **extra: str) -> dict[str, str]:
    return {
        "WORKER_ID": worker_id, "HOST": "127.0.0.1", "PORT": str(port),
        "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "JAX_PLATFORMS": "cpu", **extra,
    }




#: How far a float32 number may move when the same row is computed in another batch: XLA's kernels differ per
#: batch size (bucket), so a matrix product may round its last bits differently. Not bitwise: about 1e-6 relative.
FLOAT32_RTOL, FLOAT32_ATOL = 1e-5, 1e-6


def same_answer(a: object, b: object) -> bool:
    """Whether two JSON answers are the same, numbers within float32 rounding (FLOAT32_RTOL, FLOAT32_ATOL)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=FLOAT32_RTOL, abs_tol=FLOAT32_ATOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_answer(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answer(a[key], b[key]) for key in a)
    return a == b


def require_redis_server() -> str:
    """The redis-server binary for a test's own Redis; skip without one, fail under REQUIRE_REDIS=1 (CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed; REQUIRE_REDIS=1 to fail")
    return binary


def require_postgres_server() -> None:
    """Skip a test that needs a PostgreSQL server of its own when none is installed; fail under REQUIRE_DATABASE=1."""
    from bench.outage_servers import postgres_bin

    if postgres_bin() is None:
        if os.environ.get("REQUIRE_DATABASE") == "1":
            pytest.fail("REQUIRE_DATABASE=1 but the PostgreSQL server (initdb, postgres) is not installed")
        pytest.skip("the PostgreSQL server (initdb, postgres) is not installed; REQUIRE_DATABASE=1 to fail")
