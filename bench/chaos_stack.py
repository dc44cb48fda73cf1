"""The chaos suite's stack and its rows: a ``python -m launcher`` stack on free loopback ports, the checks that
it is whole and still running, the /predict load that rides along, and one row per scenario.

Shared by bench/chaos.py (the command and the request scenarios), bench/chaos_outages.py (job stacks with a
broker or store outage) and bench/chaos_database.py (database outages).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.hammer import Tally, comparable, hammer, same_answer
from bench.stack import REPO, children_running, terminate

#: Processes of a stack besides its workers: the ``python -m`` module each runs.
GATEWAY, WORKER, SIDECAR = b"gateway", b"worker", b"jobs.sidecar"


@dataclass
class Row:
    scenario: str
    requests: int
    failed: int
    wrong: int
    recovery_s: float | None
    note: str
    passed: bool
    lost: int | None = None


@dataclass
class Stack:
    url: str
    worker_urls: list[str]
    launcher: subprocess.Popen
    row: dict
    expected: dict
    sidecars: bool = False

    def gateway_pid(self) -> int:
        return self.child_pid(GATEWAY)

    def child_pid(self, module: bytes) -> int:
        """The first child of the launcher running ``python -m <module>``."""
        for pid in children_running(self.launcher.pid, module):
            return pid
        raise RuntimeError(f"no {module.decode()} process under the launcher")

    def worker_pid(self, index: int) -> int:
        return httpx.get(f"{self.worker_urls[index]}/health", timeout=5).json()["pid"]

    def missing(self) -> str:
        """What of the stack is not running now ("" when all is): the launcher and each of its children."""
        if self.launcher.poll() is not None:
            return f"the launcher exited with {self.launcher.returncode}"
        wanted = {GATEWAY: 1, WORKER: len(self.worker_urls), SIDECAR: len(self.worker_urls) if self.sidecars else 0}
        short = [f"{len(children_running(self.launcher.pid, module))} of {count} {module.decode()}"
                 for module, count in wanted.items() if len(children_running(self.launcher.pid, module)) < count]
        return ", ".join(short)


async def still_running(stack: Stack, timeout_s: float = 60.0) -> str:
    """"" once every process of the stack runs and /gateway/health says healthy within ``timeout_s`` (a child
    may be in its restart backoff), else what is missing. No restart is made: the launcher must do it."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            missing = stack.missing()
            if not missing:
                try:
                    if (await client.get(f"{stack.url}/gateway/health")).json()["status"] == "healthy":
                        return ""
                    missing = "/gateway/health not healthy"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    missing = f"/gateway/health: {type(exc).__name__}"
            if time.monotonic() > deadline or stack.launcher.poll() is not None:
                return missing
            await asyncio.sleep(0.5)


def free_port_run(length: int) -> int:
    """A port p such that p .. p+length-1 are free on loopback now."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            start = sock.getsockname()[1]
        if start + length < 65536 and all(_free(start + i) for i in range(length)):
            return start
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_stack(log_dir: Path, env: dict[str, str], sidecars: bool = False, log_name: str = "") -> Stack:
    port = free_port_run(3)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / (log_name or ("launcher-jobs.log" if sidecars else "launcher.log"))
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "launcher", "--workers", "2", "--port", str(port),
             *([] if sidecars else ["--no-sidecars"])],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while "ready in" not in log_path.read_text():
            if launcher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        workers = [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"]
        example = httpx.get(f"{workers[0]}/metadata", timeout=10).raise_for_status().json()["example"]
        row = {"input_data": example["input_data"]}
        expected = comparable(httpx.post(f"{workers[0]}/predict", json=row, timeout=10).raise_for_status().json())
    except BaseException:
        terminate(launcher, timeout_s=30)
        raise
    return Stack(url, workers, launcher, row, expected, sidecars)


async def whole_again(stack: Stack, since: float, timeout_s: float = 120.0,
                      condition: Callable[[dict], bool] | None = None) -> float | None:
    """Seconds from ``since`` until /gateway/health reports every worker healthy (and ``condition``)."""
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - since < timeout_s:
            try:
                health = (await client.get(f"{stack.url}/gateway/health")).json()
                if health["status"] == "healthy" and (condition is None or condition(health)):
                    return time.monotonic() - since
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
    return None


async def under_load(stack: Stack, clients: int, load_s: float, action: Callable[[], Awaitable[float | None]],
                     url: str | None = None) -> tuple[Tally, float | None]:
    """Load for ``load_s`` with ``action`` 1 s in; the action returns the recovery seconds."""
    stop = asyncio.Event()
    load = asyncio.create_task(hammer(url or stack.url, stack.row, stack.expected, clients, stop))
    await asyncio.sleep(1.0)
    recovery = await action()
    await asyncio.sleep(max(0.0, load_s - 1.0))
    stop.set()
    return await load, recovery


async def predict_probe(stack: Stack, stop: asyncio.Event, clients: int = 2, interval_s: float = 0.05) -> Tally:
    """Paced /predict clients for the job scenarios, until ``stop``: each sends the model's example, checks the
    answer, waits ``interval_s``. Light on purpose (about 40 requests a second), so the jobs keep the CPU; any
    answer but the right one counts as failed, a 503 included."""
    tally = Tally()

    async def one_client(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await client.post(f"{stack.url}/predict", json=stack.row)
            except httpx.HTTPError as exc:
                tally.failures.append(f"{type(exc).__name__}: {exc}")
            else:
                if response.status_code != 200:
                    tally.failures.append(f"{response.status_code} {response.content[:200]!r}")
                elif not same_answer(comparable(response.json()), stack.expected):
                    tally.wrong += 1
                else:
                    tally.ok += 1
                    tally.ok_seconds.append(time.monotonic() - started)
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(one_client(client) for _ in range(clients)))
    return tally


def failure_note(tally: Tally) -> str:
    if not tally.failures:
        return ""
    kinds: dict[str, int] = {}
    for failure in tally.failures:
        kinds[failure[:80]] = kinds.get(failure[:80], 0) + 1
    return "; ".join(f"{count}x {kind}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])


def predict_note(tally: Tally) -> str:
    """The /predict load of a job scenario, for its note."""
    failed = tally.failed(shed_is_failure=True)
    p99 = Tally.percentile_ms(tally.ok_seconds, 99)
    text = f"/predict {tally.requests} requests, {failed} failed, {tally.wrong} wrong"
    return text + (f", p99 {p99:.0f} ms" if p99 is not None else "") + (
        f" ({failure_note(tally)})" if tally.failures else "")


def request_row(name: str, tally: Tally, recovery: float | None, note: str = "") -> Row:
    failed = tally.failed(shed_is_failure=True)
    p99 = Tally.percentile_ms(tally.ok_seconds, 99)
    detail = [f"p99 {p99:.0f} ms" if p99 is not None else "", note, failure_note(tally)]
    return Row(name, tally.requests, failed, tally.wrong, recovery, "; ".join(d for d in detail if d),
               failed == 0 and tally.wrong == 0 and tally.ok > 0)
