"""The supervisor against real child processes: restarts with capped backoff, a give-up only when a whole group
fails at start, the status file, a stop that reaches every child."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from launcher.status import ProcessStatus, StatusFile
from launcher.supervisor import Child, Supervisor

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]
#: A process killed as soon as it runs, as an out-of-memory killer would.
KILLED_AT_START = [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]


def child(name: str, code: str, rank: int = 0, group: str = "") -> Child:
    return Child(name, [PY, "-c", code], {}, stop_rank=rank, group=group)


async def wait_for_line(target: Child, text: str, timeout_s: float = 20) -> None:
    """Poll the child's recent output (its start-up only)."""
    async def seen() -> None:
        while not (target.logs and any(text in line for line in target.logs.recent)):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(seen(), timeout_s)


class Recorder(StatusFile):
    """A status file (written when given a path) that keeps every state written, and wakes the test at each."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path or Path())
        self._real = path is not None
        self.history: list[dict[str, dict]] = []
        self._written = asyncio.Event()

    def write(self, processes: list[ProcessStatus]) -> None:
        if self._real:
            super().write(processes)
        self.history.append({process.name: asdict(process) for process in processes})
        self._written.set()

    async def until(self, condition: Callable[[dict[str, dict]], bool], timeout_s: float = 30) -> None:
        async def seen() -> None:
            while not (self.history and condition(self.history[-1])):
                self._written.clear()
                await self._written.wait()

        await asyncio.wait_for(seen(), timeout_s)


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


async def test_a_child_that_keeps_failing_fast_stops_everything_and_shows_why(capsys) -> None:
    boom = child("boom", "raise RuntimeError('boom at start-up')")
    sleeper = Child("sleeper", SLEEPER, {}, stop_rank=1)
    supervisor = Supervisor([boom, sleeper], backoff_s=0.05, max_fast_failures=3, fast_exit_s=30)
    code = await asyncio.wait_for(supervisor.run(), 60)
    out = capsys.readouterr().out
    assert code == 1
    assert boom.status.restarts == 2  # three runs, the third one ends it
    assert "launcher | last" in out and "    RuntimeError: boom at start-up" in out
    assert "boom exited with code 1 3 times in a row" in supervisor.failure
    assert sleeper.process is not None and sleeper.process.returncode is not None


async def test_a_child_that_cannot_be_started_stops_the_others() -> None:
    sleeper = Child("sleeper", SLEEPER, {})
    supervisor = Supervisor([Child("missing", ["/nonexistent/program"], {}), sleeper], backoff_s=0.01)
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    assert supervisor.failure.startswith("missing could not be started ([Errno 2] ")
    assert "3 times in a row" in supervisor.failure
    assert sleeper.process is None or sleeper.process.returncode is not None


async def test_huge_lines_and_any_bytes_never_stop_the_log_pump(capsys) -> None:
    writer = child(
        "writer",
        "import sys; out = sys.stdout.buffer\n"
        "out.write(b'x' * 200_000 + b'\\n')\n"
        "out.write(b'\\xff\\xfe not utf-8\\n')\n"
        "out.write(b'line of log\\n' * 200_000)\n"  # 2.4 MB: far more than a pipe holds
        "out.write(b'the end\\n')",
    )
    supervisor = Supervisor([writer], max_fast_failures=1, max_line_bytes=1000)
    assert await asyncio.wait_for(supervisor.run(), 60) == 1  # it exits at once, so one fast exit ends the run
    out = capsys.readouterr().out
    assert "writer | " + "x" * 1000 + " [... 199000 more bytes cut]" in out
    assert "writer | \ufffd\ufffd not utf-8" in out
    assert "writer | the end" in out


async def test_stop_kills_a_child_that_ignores_sigterm_and_what_it_started() -> None:
    stubborn = child(
        "stubborn",
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', grandchild.pid, flush=True)\n"
        "time.sleep(60)",
    )
    polite = Child("polite", SLEEPER, {}, stop_rank=1)
    supervisor = Supervisor([stubborn, polite], stop_timeout_s=0.5)
    running = asyncio.create_task(supervisor.run())
    await wait_for_line(stubborn, "grandchild")
    grandchild = int(next(line for line in stubborn.logs.recent if "grandchild" in line).split()[-1])
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert stubborn.process.returncode is not None and polite.process.returncode is not None
    assert not alive(grandchild)


async def test_a_child_that_ran_a_while_is_restarted_not_given_up_on_and_its_backoff_starts_again() -> None:
    flaky = child("flaky", "print('up', flush=True)")
    status = Recorder()
    supervisor = Supervisor([flaky], backoff_s=0.01, max_fast_failures=3, fast_exit_s=0, status_file=status)
    running = asyncio.create_task(supervisor.run())
    await status.until(lambda seen: seen["flaky"]["restarts"] >= 4)
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert supervisor.failure is None
    assert {entry["flaky"]["backoff_s"] for entry in status.history if entry["flaky"]["backoff_s"]} == {0.01}


async def test_one_worker_failing_at_each_start_is_restarted_while_the_other_stays_up(capsys) -> None:
    failing = child("worker-0", "raise SystemExit(1)", group="worker")
    steady = Child("worker-1", SLEEPER, {}, group="worker")
    status = Recorder()
    supervisor = Supervisor([failing, steady], backoff_s=0.01, max_backoff_s=0.04, max_fast_failures=2,
                            fast_exit_s=30, status_file=status)
    running = asyncio.create_task(supervisor.run())
    await status.until(lambda seen: seen["worker-0"]["restarts"] >= 2 and seen["worker-1"]["state"] == "running")
    first_pid = steady.process.pid
    await status.until(lambda seen: seen["worker-0"]["restarts"] >= 8)
    assert supervisor.failure is None and not running.done()
    assert steady.process.pid == first_pid and steady.process.returncode is None
    assert failing.status.fast_failures >= 8 and failing.status.last_exit_code == 1
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert "worker-0 exited with code 1; restarting in 0.0s (restart 8)" in capsys.readouterr().out


async def test_a_lone_worker_killed_at_each_start_is_never_given_up_on(capsys) -> None:
    killed = Child("worker-0", KILLED_AT_START, {}, group="worker")  # as an out-of-memory killer would
    status = Recorder()
    supervisor = Supervisor([killed], backoff_s=0.01, max_backoff_s=0.02, max_fast_failures=1, status_file=status)
    running = asyncio.create_task(supervisor.run())
    await status.until(lambda seen: seen["worker-0"]["restarts"] >= 5)
    assert supervisor.failure is None and killed.status.fast_failures == 0
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert "worker-0 exited with code -9 (SIGKILL); restarting in 0.0s (restart 5)" in capsys.readouterr().out


async def test_backoff_doubles_up_to_its_cap() -> None:
    crasher = child("crasher", "raise SystemExit(3)", group="worker")
    status = Recorder()
    supervisor = Supervisor([crasher, Child("steady", SLEEPER, {}, group="worker")], backoff_s=0.01,
                            max_backoff_s=0.04, max_fast_failures=1, status_file=status)
    running = asyncio.create_task(supervisor.run())
    await status.until(lambda seen: seen["crasher"]["restarts"] >= 5)
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    waits = [entry["crasher"]["backoff_s"] for entry in status.history if entry["crasher"]["state"] == "backing-off"]
    assert list(dict.fromkeys(value for value in waits if value)) == [0.01, 0.02, 0.04]
    assert waits[-1] == 0.04


async def test_every_worker_failing_fast_gives_up_as_a_broken_model_does() -> None:
    workers = [child(f"worker-{i}", "raise SystemExit(1)", group="worker") for i in range(2)]
    supervisor = Supervisor([*workers, Child("sidecar-0", SLEEPER, {}, group="sidecar", essential=False)],
                            backoff_s=0.01, max_fast_failures=3)
    assert await asyncio.wait_for(supervisor.run(), 60) == 1
    assert all(worker.status.fast_failures >= 3 for worker in workers)
    assert " exited with code 1 3 times in a row, each within 30s of starting, as did worker-" in supervisor.failure


async def test_a_sidecar_failing_fast_for_ever_never_stops_the_stack() -> None:
    sidecar = Child("sidecar-0", [PY, "-c", "raise SystemExit(1)"], {}, group="sidecar", essential=False)
    worker = Child("worker-0", SLEEPER, {}, group="worker")
    status = Recorder()
    supervisor = Supervisor([sidecar, worker], backoff_s=0.01, max_backoff_s=0.02, max_fast_failures=1,
                            status_file=status)
    running = asyncio.create_task(supervisor.run())
    await status.until(lambda seen: seen["sidecar-0"]["restarts"] >= 6)
    assert supervisor.failure is None and worker.process.returncode is None
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0


async def test_the_status_file_says_what_each_child_does(tmp_path: Path) -> None:
    path = tmp_path / "processes.json"
    killed = Child("worker-0", KILLED_AT_START, {}, group="worker")
    steady = Child("worker-1", SLEEPER, {}, group="worker")
    status = Recorder(path)
    supervisor = Supervisor([killed, steady], backoff_s=0.01, max_backoff_s=0.02, status_file=status)
    running = asyncio.create_task(supervisor.run())
    await status.until(lambda seen: seen["worker-0"]["restarts"] >= 3 and seen["worker-1"]["state"] == "running")
    processes = {entry["name"]: entry for entry in json.loads(path.read_text())["processes"]}
    assert processes["worker-1"] == {
        "name": "worker-1", "group": "worker", "model": None, "state": "running", "pid": steady.process.pid,
        "restarts": 0, "fast_failures": 0, "last_exit_code": None, "last_exit_at": None, "backoff_s": None,
    }
    assert processes["worker-0"]["last_exit_code"] == -9 and processes["worker-0"]["last_exit_at"] > 0
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    final = json.loads(path.read_text())
    assert final["launcher_pid"] == os.getpid()
    assert {entry["state"] for entry in final["processes"]} == {"stopped"}
    assert [p.name for p in tmp_path.iterdir()] == ["processes.json"]  # no temporary file left behind
