"""Local processes for the benchmark: workers and gateways on free loopback ports.

Each is a context manager that starts the process, waits until it is ready
(a worker's /health is 200 once warm; a gateway's /gateway/health once it sees
every worker), and stops it with SIGTERM on exit. Logs go to files under the
run's log folder, as they would go to a collector in production.

A gateway runs as ``make run`` runs it: on a listening socket the benchmark
holds (``LISTEN_FD``), in one or more processes (``GATEWAY_PROCESSES``) that
all accept on it (launcher/gateways.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from launcher.gateways import MULTIPROC_ENV, listen_socket, metrics_folder

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The worker's counter of predict_batch traces (each is an XLA compilation), worker/metrics.py.
COMPILATIONS = "worker_jit_compilations_total"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def terminate(process: subprocess.Popen, timeout_s: float = 15.0, *, signalled: bool = False) -> int:
    """SIGTERM (unless ``signalled`` already), then SIGKILL to the whole session after ``timeout_s``;
    the exit status."""
    if process.poll() is None:
        if not signalled:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def children_running(parent_pid: int, module: bytes) -> list[int]:
    """The pids of ``parent_pid``'s children running ``python -m <module>`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        if ppid == parent_pid and module in argv and b"-m" in argv:
            pids.append(int(entry.name))
    return pids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def metric_totals(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each of the named families of ``url``'s /metrics, summed over its labels (one missing: not in the dict)."""
    text = httpx.get(url + "/metrics", timeout=5.0).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]
        if name in names:
            values[name] = values.get(name, 0.0) + float(value)
    return values


class Process:
    """One part of the stack, in ``copies`` processes of the same command; ``url`` is where it listens."""

    ready_path = "/health"

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, port: int, *, copies: int = 1,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._argv = argv
        self._env = env
        self._pass_fds = pass_fds
        self._log_paths = [log_dir / (f"{name}.log" if copies == 1 else f"{name}-{i}.log") for i in range(copies)]
        self._processes: list[subprocess.Popen] = []

    @property
    def pid(self) -> int:
        """The first process's pid (the one a profiler samples)."""
        return self._processes[0].pid

    def _is_ready(self, response: httpx.Response) -> bool:
        return response.status_code == 200

    def _copies_ready(self) -> bool:
        """Whether every copy serves (the answer on the shared port may come from any one of them)."""
        return True

    def cpu_seconds(self) -> float:
        """User + system CPU time of its processes so far, all their threads."""
        return sum(self.cpu_seconds_each())

    def cpu_seconds_each(self) -> list[float]:
        return [_cpu_seconds(process.pid) for process in self._processes]

    def _spawn(self, log_path: Path) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                self._argv, env={**os.environ, **self._env}, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO, start_new_session=True, pass_fds=self._pass_fds,
            )

    def start(self) -> Process:
        self._processes = [self._spawn(path) for path in self._log_paths]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for process, path in zip(self._processes, self._log_paths, strict=True):
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{self.name} exited with {process.returncode}; see {path}")
            try:
                if self._is_ready(httpx.get(self.url + self.ready_path, timeout=1.0)) and self._copies_ready():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # start-up only
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {START_TIMEOUT_S:.0f}s; see {self._log_paths[0]}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to every copy at once (they drain side by side), then ``terminate`` each."""
        processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            terminate(process, timeout_s, signalled=True)

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
        self._compilations_at_ready: float | None = None
        #: XLA compilations between readiness (warm-up done) and the stop; None until stopped.
        self.compilations_after_ready: int | None = None

    def start(self) -> Worker:
        super().start()
        self._compilations_at_ready = self.metric_sums().get(COMPILATIONS, 0.0)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._processes and self._compilations_at_ready is not None:
            try:
                compiled = self.metric_sums().get(COMPILATIONS, 0.0) - self._compilations_at_ready
                self.compilations_after_ready = int(compiled)
            except httpx.HTTPError:
                pass  # it died: the run's errors say so
        super().stop(timeout_s)

    def metric_sums(self) -> dict[str, float]:
        """Counters of /metrics that say how the batcher behaved (sums and counts), summed over their labels
        (the batch histogram has one series per model version)."""
        return metric_totals(self.url, ("worker_batch_size_sum", "worker_batch_size_count", COMPILATIONS))


class Gateway(Process):
    ready_path = "/gateway/health"
    #: What uvicorn logs once the lifespan (which probes every worker) is done and the process accepts.
    STARTED_LINE = b"Application startup complete"

    def __init__(
        self, name: str, workers: list[str], log_dir: Path, *, module: str = "gateway",
        env: dict[str, str] | None = None, processes: int = 1,
    ) -> None:
        """``workers``: their ``host:port`` addresses; ``module`` runs as ``python -m module``, in ``processes``
        processes accepting on one socket (logging at ``info`` unless ``env`` says otherwise: with several,
        readiness waits for each one's start-up line)."""
        self._socket = listen_socket("127.0.0.1", 0)
        port = self._socket.getsockname()[1]
        self._expected = len(workers)
        self.processes = processes
        self._metrics = contextlib.ExitStack()
        base = {"HOST": "127.0.0.1", "PORT": str(port), "WORKERS": ",".join(workers), "LOG_LEVEL": "info",
                "LISTEN_FD": str(self._socket.fileno())}
        super().__init__(name, [sys.executable, "-m", module], {**base, **(env or {})}, log_dir, port,
                         copies=processes, pass_fds=(self._socket.fileno(),))

    def _is_ready(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json().get("alive_backends") == self._expected

    def in_flight(self) -> float:
        """Requests it is proxying now, over all its processes."""
        return metric_totals(self.url, ("gateway_in_flight",)).get("gateway_in_flight", 0.0)

    def _copies_ready(self) -> bool:
        # Any one process can answer the readiness probe: the others must have said they started.
        return self.processes == 1 or all(self.STARTED_LINE in path.read_bytes() for path in self._log_paths)

    def start(self) -> Gateway:
        folder = self._metrics.enter_context(metrics_folder(self.processes))
        if folder is not None:
            self._env[MULTIPROC_ENV] = str(folder)
        try:
            super().start()
        except BaseException:
            self._metrics.close()
            raise
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        super().stop(timeout_s)
        self._socket.close()
        self._metrics.close()
