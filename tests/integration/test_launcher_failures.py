"""``python -m launcher`` when a worker fails: a model that cannot start makes it say why, stop everything at the
first exit and exit non-zero; one worker killed again and again is restarted while the rest serves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.launcher.hammer import Hammer
from tests.support import JAX_CACHE_DIR, REPO, free_port_run, start_process, stop_process, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("model", "method", "cause"),
    [
        ("tests.integration.broken_model:MissingWeights", "load", "FileNotFoundError: /"),  # load() raises
        ("worker.model:DoesNotExist", "MODEL=worker.model:DoesNotExist",
         "ModelNotFound: MODEL=worker.model:DoesNotExist"),
    ],
)
def test_a_broken_model_stops_the_launcher_at_its_first_exit_with_the_cause_last(model: str, method: str,
                                                                                  cause: str) -> None:
    port = free_port_run(2)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port), "--no-sidecars"],
        env={**os.environ, "MODEL": model, "JAX_PLATFORMS": "cpu", "FAILED_EXIT_DELAY_S": "0.5"},
        cwd=REPO, capture_output=True, text=True, timeout=90,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    # A broken model is not restarted: it fails the same way every time, so the first exit stops the stack.
    assert not any("restarting in" in line for line in lines), result.stdout[-3000:]
    # The worker's traceback is repeated with the launcher's reason, not lost among other children's lines.
    last_lines = lines.index(next(line for line in lines if line.startswith("launcher | last ")))
    assert any(cause in line for line in lines[last_lines:]), result.stdout[-3000:]
    # The last line names the model, the method and the cause.
    assert lines[-1].startswith("launcher | stopped: worker-0: the model cannot start: "), lines[-1]
    assert cause.split(":")[0] in lines[-1] and method in lines[-1], lines[-1]
    assert elapsed < 60, f"took {elapsed:.0f}s"
    with socket.socket() as sock:  # the gateway was stopped too: nothing listens on its port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


#: More than --max-fast-failures (3): the old rule stopped everything on the third.
KILLS = 4


def _back(url: str, name: str, gone: list[int]) -> int | None:
    """The pid of ``name`` once the launcher has started it again (per /gateway/info), else None."""
    processes = httpx.get(f"{url}/gateway/info", timeout=5).json().get("processes", [])
    entry = next((entry for entry in processes if entry["name"] == name), None)
    running = entry is not None and entry["state"] == "running" and entry["pid"] not in gone
    return entry["pid"] if running else None


def test_a_worker_killed_each_time_it_is_back_never_stops_the_stack(tmp_path: Path) -> None:
    port = free_port_run(3)
    url = f"http://127.0.0.1:{port}"
    env = {"JAX_CACHE_DIR": str(JAX_CACHE_DIR), "JAX_PLATFORMS": "cpu", "HEALTH_INTERVAL_S": "0.5",
           "ACCESS_LOG": "false", "JOBS_DIR": str(tmp_path / "jobs")}
    log = tmp_path / "launcher.log"
    launcher = start_process(
        [sys.executable, "-m", "launcher", "--workers", "2", "--port", str(port), "--no-sidecars"], env, log
    )
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
        assert launcher.poll() is None, log.read_text()[-3000:]
        body = httpx.get(f"{url}/metadata", timeout=10).raise_for_status().json()["example"]
        with Hammer(url, body) as hammer:
            wait_until(lambda: hammer.ok >= 10, 30, "answers before the kills")
            killed: list[int] = []
            for _ in range(KILLS):  # as an out-of-memory killer would, each time it is back
                pid = wait_until(lambda: _back(url, "worker-0", killed), 60, "worker-0 started again")
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            answered_meanwhile = hammer.by_worker["1"]
            wait_until(lambda: _back(url, "worker-0", killed), 60, "worker-0 started again")
            wait_until(lambda: httpx.get(f"{url}/gateway/health", timeout=5).json()["alive_backends"] == 2, 120,
                       "worker-0 back in rotation")
            wait_until(lambda: hammer.by_worker["0"] > 10, 30, "answers from worker-0 again")
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert hammer.failures == [], hammer.failures[:5]
        assert answered_meanwhile > 0
        info = httpx.get(f"{url}/gateway/info", timeout=5).json()
        worker_0 = next(entry for entry in info["processes"] if entry["name"] == "worker-0")
        assert worker_0["restarts"] == KILLS and worker_0["last_exit_code"] == -signal.SIGKILL
        assert worker_0["state"] == "running" and worker_0["pid"] not in killed
        assert f'gateway_supervised_restarts_total{{process="worker-0"}} {KILLS}.0' in httpx.get(f"{url}/metrics").text
        text = log.read_text()
        assert text.count("launcher | worker-0 exited with code -9 (SIGKILL); restarting in") == KILLS
        assert "giving up" not in text
    finally:
        stop_process(launcher, timeout_s=30)
