"""Local processes for the benchmark: workers and gateways on free loopback ports.

Each is a context manager that starts the process, waits until it is ready
(a worker's /health is 200 once warm; a gateway's /gateway/health once it sees
every worker), and stops it with SIGTERM on exit. Logs go to files under the
run's log folder, as they would go to a collector in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def terminate(process: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGTERM, then SIGKILL to the whole session after ``timeout_s``; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


class Process:
    """One child process of the stack; ``url`` is where it listens."""

    ready_path = "/health"

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._argv = argv
        self._env = env
        self._log_path = log_dir / f"{name}.log"
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def _is_ready(self, response: httpx.Response) -> bool:
        return response.status_code == 200

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far, all its threads (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def start(self) -> Process:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self._log_path, "ab")  # noqa: SIM115 - the child holds it; closed on stop
        self._process = subprocess.Popen(
            self._argv, env={**os.environ, **self._env}, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}; see {self._log_path}")
            try:
                if self._is_ready(httpx.get(self.url + self.ready_path, timeout=1.0)):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # start-up only
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {START_TIMEOUT_S:.0f}s; see {self._log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, timeout_s)

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Worker(Process):
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __init__(
        self, name: str, model: str, log_dir: Path, *, worker_id: str = "0", env: dict[str, str] | None = None
    ) -> None:
        port = free_port()
        base = {
            "WORKER_ID": worker_id, "HOST": "127.0.0.1", "PORT": str(port), "MODEL": model,
            "JAX_PLATFORMS": "cpu", "LOG_LEVEL": "warning",
        }
        super().__init__(name, [sys.executable, "-m", "worker"], {**base, **(env or {})}, log_dir, port)

    def metric_sums(self) -> dict[str, float]:
        """Counters of /metrics that say how the batcher behaved (sums and counts)."""
        text = httpx.get(self.url + "/metrics", timeout=5.0).text
        wanted = ("worker_batch_size_sum", "worker_batch_size_count", "worker_jit_compilations_total")
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                values[name] = float(value)
        return values


class Gateway(Process):
    ready_path = "/gateway/health"

    def __init__(
        self, name: str, workers: list[str], log_dir: Path, *, module: str = "gateway",
        env: dict[str, str] | None = None,
    ) -> None:
        """``workers``: their ``host:port`` addresses; ``module`` runs as ``python -m module``."""
        port = free_port()
        self._expected = len(workers)
        base = {"HOST": "127.0.0.1", "PORT": str(port), "WORKERS": ",".join(workers)}
        super().__init__(name, [sys.executable, "-m", module], {**base, **(env or {})}, log_dir, port)

    def _is_ready(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json().get("alive_backends") == self._expected
