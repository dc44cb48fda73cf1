"""Run child processes in the foreground: prefixed logs, restarts with backoff, clean stop.

Each child runs in its own session, so Ctrl-C reaches only the launcher, which
then stops the children in order (gateway first, so it can drain). Children
also get SIGTERM if the launcher itself dies (Linux ``PR_SET_PDEATHSIG``).

A child that exits within ``fast_exit_s`` of starting ``max_fast_failures``
times in a row will not start (a model that fails to load, a port in use):
the supervisor prints its last lines of output and why it gives up, stops the
others, and ``run()`` returns 1. A stop always reaches every child: each wait
is bounded, a child that ignores SIGTERM has its whole process group killed,
and a failure while supervising one child stops all of them, never some.
Hand-written because it is the project's own glue: honcho has no restarts,
supervisord no foreground prefixed logs or readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.logs import LogPump

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
    #: File descriptors the child inherits (the gateway's listening socket).
    pass_fds: tuple[int, ...] = ()
    #: Called with the pid of each of its processes once that process has exited.
    on_exit: Callable[[int], None] | None = field(default=None, repr=False)
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    logs: LogPump | None = field(default=None, repr=False)
    _log_task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self, children: list[Child], *, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
        stop_timeout_s: float = 8.0, fast_exit_s: float = 30.0, max_fast_failures: int = 3,
        recent_lines: int = 30, max_line_bytes: int = 16 * 1024,
    ) -> None:
        self.children = children
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._stop_timeout_s = stop_timeout_s
        self._fast_exit_s = fast_exit_s
        self._max_fast_failures = max_fast_failures
        self._recent_lines = recent_lines
        self._max_line_bytes = max_line_bytes
        self._stopping = asyncio.Event()
        #: Why the supervisor gave up, if it did.
        self.failure: str | None = None
        width = max(len(child.name) for child in children)
        self._prefix = {child.name: f"{child.name:<{width}} | " for child in children}

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env={**os.environ, **child.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=child.pass_fds,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        assert child.process.stdout is not None
        child.logs = LogPump(
            self._prefix[child.name], max_line_bytes=self._max_line_bytes, recent_lines=self._recent_lines
        )
        child._log_task = asyncio.create_task(child.logs.run(child.process.stdout), name=f"logs-{child.name}")

    async def _keep_alive(self, child: Child) -> None:
        """Restart the child whenever it exits, waiting longer after quick crashes; give up on a crash loop."""
        delay, fast_failures = self._backoff_s, 0
        while not self._stopping.is_set():
            started = time.monotonic()
            await self._spawn(child)
            assert child.process is not None
            if self._stopping.is_set():  # stop() came while it was starting: run() may have missed it
                await self._terminate(child)
                return
            code = await child.process.wait()
            if child.on_exit is not None:
                child.on_exit(child.process.pid)
            await self._drain_logs(child)
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self._fast_exit_s:  # it ran a while: the next crash starts fresh
                delay, fast_failures = self._backoff_s, 0
            else:
                fast_failures += 1
            if fast_failures >= self._max_fast_failures:
                self._give_up(
                    child,
                    f"{child.name} exited with code {code} {fast_failures} times in a row, each within "
                    f"{self._fast_exit_s:g}s of starting; giving up and stopping everything",
                )
                return
            child.restarts += 1
            self.say(f"{child.name} exited with {code}; restarting in {delay:.1f}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self._max_backoff_s)

    async def _supervise(self, child: Child) -> None:
        try:
            await self._keep_alive(child)
        except Exception as exc:  # e.g. the command cannot be started: stop all rather than run a partial stack
            self._give_up(child, f"supervising {child.name} failed: {exc!r}; stopping everything")

    def _give_up(self, child: Child, reason: str) -> None:
        recent = list(child.logs.recent) if child.logs is not None else []
        if recent:
            self.say(f"last {len(recent)} line(s) of {child.name}:\n" + "\n".join(f"    {line}" for line in recent))
        self.say(reason)
        self.failure = self.failure or reason
        self.stop()

    async def _drain_logs(self, child: Child) -> None:
        """Let the pump print what the child wrote last; a pump held open by a grandchild is left running."""
        if child._log_task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(child._log_task), 2.0)

    def say(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.write(f"launcher | {message}\n")
            sys.stdout.flush()

    async def run(self) -> int:
        """Supervise until ``stop()`` or a crash loop; stop every child, in rank order; 0, or 1 on failure."""
        keepers = [asyncio.create_task(self._supervise(child), name=f"keep-{child.name}") for child in self.children]
        await self._stopping.wait()
        for rank in sorted({child.stop_rank for child in self.children}):
            await asyncio.gather(
                *(self._terminate(c) for c in self.children if c.stop_rank == rank), return_exceptions=True
            )
        _, late = await asyncio.wait(keepers, timeout=self._stop_timeout_s + 10)
        for task in late:
            task.cancel()
        log_tasks = [c._log_task for c in self.children if c._log_task is not None and not c._log_task.done()]
        if log_tasks:
            _, late = await asyncio.wait(log_tasks, timeout=2.0)
            for task in late:
                task.cancel()
        return 1 if self.failure else 0

    def stop(self) -> None:
        self._stopping.set()

    async def _terminate(self, child: Child) -> None:
        """SIGTERM, then SIGKILL to its process group; every wait bounded."""
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        if await self._exited(process, self._stop_timeout_s):
            return
        self.say(f"{child.name} did not stop in {self._stop_timeout_s}s; killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: any process it started goes too
        if not await self._exited(process, 5.0):
            self.say(f"{child.name} (pid {process.pid}) could not be reaped")

    @staticmethod
    async def _exited(process: asyncio.subprocess.Process, timeout_s: float) -> bool:
        # wait() also waits for the output pipe to close; the exit status alone is enough here.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), timeout_s)
        return process.returncode is not None
