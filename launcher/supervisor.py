"""Run child processes in the foreground: prefixed logs, restarts with backoff, clean stop.

Each child runs in its own session, so Ctrl-C reaches only the launcher, which
then stops the children in order (gateway first, so it can drain). Children
also get SIGTERM if the launcher itself dies (Linux ``PR_SET_PDEATHSIG``).
Hand-written because it is the project's own glue: honcho has no restarts,
supervisord no foreground prefixed logs or readiness; this is ~120 lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass, field

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    #: Stop order: lower stops first.
    stop_rank: int = 0
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    _log_task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self, children: list[Child], *, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
        stop_timeout_s: float = 8.0,
    ) -> None:
        self.children = children
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._stop_timeout_s = stop_timeout_s
        self._stopping = asyncio.Event()
        width = max(len(child.name) for child in children)
        self._prefix = {child.name: f"{child.name:<{width}} | " for child in children}

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env={**os.environ, **child.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child._log_task = asyncio.create_task(self._pipe_logs(child, child.process))

    async def _pipe_logs(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        prefix = self._prefix[child.name]
        async for line in process.stdout:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _keep_alive(self, child: Child) -> None:
        """Restart the child whenever it exits, waiting longer after quick crashes."""
        delay = self._backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            await self._spawn(child)
            assert child.process is not None
            code = await child.process.wait()
            if child._log_task is not None:
                await child._log_task
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 30:  # it ran a while: the next crash starts fresh
                delay = self._backoff_s
            child.restarts += 1
            self.say(f"{child.name} exited with {code}; restarting in {delay:.1f}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self._max_backoff_s)

    def say(self, message: str) -> None:
        sys.stdout.write(f"launcher | {message}\n")
        sys.stdout.flush()

    async def run(self) -> None:
        """Supervise until ``stop()`` is called; then stop every child, in rank order."""
        keepers = [asyncio.create_task(self._keep_alive(child)) for child in self.children]
        await self._stopping.wait()
        for rank in sorted({child.stop_rank for child in self.children}):
            await asyncio.gather(*(self._terminate(c) for c in self.children if c.stop_rank == rank))
        await asyncio.gather(*keepers, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._stop_timeout_s)
        except asyncio.TimeoutError:
            self.say(f"{child.name} did not stop in {self._stop_timeout_s}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
