"""``python -m launcher`` with a worker that cannot start: it says why, stops everything and exits non-zero."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.support import REPO, free_port_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("model", "cause"),
    [
        ("tests.integration.broken_model:MissingWeights", "FileNotFoundError: /"),  # load() raises
        ("worker.model:DoesNotExist", "ModelNotFound: MODEL=worker.model:DoesNotExist"),
    ],
)
def test_a_worker_that_fails_at_start_makes_the_launcher_exit_non_zero_with_the_cause(model: str, cause: str) -> None:
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
    reason = next(line for line in lines if "times in a row" in line)
    assert reason.startswith("launcher | worker-0 exited with code 1 3 times in a row")
    # The worker's traceback is repeated with the launcher's reason, not lost among other children's lines.
    last_lines = lines.index(next(line for line in lines if line.startswith("launcher | last ")))
    assert any(cause in line for line in lines[last_lines:]), result.stdout[-3000:]
    assert lines[-1].startswith("launcher | stopped: worker-0 exited")
    assert elapsed < 60, f"took {elapsed:.0f}s"
    with socket.socket() as sock:  # the gateway was stopped too: nothing listens on its port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
