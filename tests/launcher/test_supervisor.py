"""The supervisor against real child processes: crash loops end the run, a stop reaches every child."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from launcher.supervisor import Child, Supervisor

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]


def child(name: str, code: str, rank: int = 0) -> Child:
    return Child(name, [PY, "-c", code], {}, stop_rank=rank)


async def wait_for_line(target: Child, text: str, timeout_s: float = 20) -> None:
    """Poll the child's recent output (its start-up only)."""
    async def seen() -> None:
        while not (target.logs and any(text in line for line in target.logs.recent)):
            await asyncio.sleep(0.05)

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
    assert boom.restarts == 2  # three runs, the third one ends it
    assert "launcher | last" in out and "    RuntimeError: boom at start-up" in out
    assert "boom exited with code 1 3 times in a row" in supervisor.failure
    assert sleeper.process is not None and sleeper.process.returncode is not None


async def test_a_child_that_cannot_be_started_stops_the_others() -> None:
    sleeper = Child("sleeper", SLEEPER, {})
    supervisor = Supervisor([Child("missing", ["/nonexistent/program"], {}), sleeper])
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    assert "supervising missing failed" in supervisor.failure
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


async def test_a_child_that_ran_a_while_is_restarted_not_given_up_on(capsys) -> None:
    flaky = child("flaky", "print('up', flush=True)")
    supervisor = Supervisor([flaky], backoff_s=0.01, max_fast_failures=3, fast_exit_s=0)
    running = asyncio.create_task(supervisor.run())

    async def restarted_thrice() -> None:
        while flaky.restarts < 3:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(restarted_thrice(), 30)
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert supervisor.failure is None
