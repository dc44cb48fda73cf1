"""Run child processes in the foreground: prefixed logs, restarts with backoff, clean stop.

Each child runs in its own session, so Ctrl-C reaches only the launcher, which
then stops the children in order (gateway first, so it can drain). Children
also get SIGTERM if the launcher itself dies (Linux ``PR_SET_PDEATHSIG``).

A child that exits is started again, for as long as it takes: after a wait of
``backoff_s`` that doubles with each exit soon after a start, up to
``max_backoff_s``, and is back to ``backoff_s`` once the child has run
``fast_exit_s``. One process failing never stops the others: a worker killed
again and again (an out-of-memory killer) leaves the other workers and the
gateway serving. A child that exits with common.exit_codes.MODEL_BROKEN (a
model that cannot start, which no restart would change) makes it give up at
once, its last line naming the cause (and the child's MODELS entry, if any). Otherwise the supervisor gives up only on
a failure every member of a group hits the same way (a port in use): when each
has exited within ``fast_exit_s`` of its start
``max_fast_failures`` times in a row (a SIGKILL comes from outside: never
counted). It then prints the last lines of output of the child that completed
the count and why it gives up, stops the others, and ``run()`` returns 1. A
child that is not ``essential`` (a job sidecar: serving does not need it) never
makes it give up. A stop always reaches every child: each wait is bounded, a
child that ignores SIGTERM has its whole process group killed, and a failure
of the supervisor itself stops all of them, never some. Each child's state
(launcher/status.py) is written to a file on every change.
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
from typing import Any

from common.exit_codes import MODEL_BROKEN, MODEL_BROKEN_LINE
from launcher.logs import LogPump
from launcher.status import ProcessStatus, StatusFile

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_text(code: int | None) -> str:
    """``code 1``, or ``code -9 (SIGKILL)`` for a process a signal ended."""
    if code is None or code >= 0:
        return f"code {code}"
    try:
        return f"code {code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"code {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    #: Stop order: lower stops first.
    stop_rank: int = 0
    #: Children running the same program ("worker", "gateway"); the supervisor gives up only when every
    #: member keeps failing at start. Empty: a group of its own.
    group: str = ""
    #: False for a process serving does not need (a job sidecar): it is restarted for ever, never a give-up.
    essential: bool = True
    #: File descriptors the child inherits (the gateway's listening socket).
    pass_fds: tuple[int, ...] = ()
    #: The model's name, for the status file: a worker's (and its sidecar's) under MODELS.
    model: str | None = None
    #: Where the process comes from, named when a broken model stops everything (its MODELS entry).
    entry: str = ""
    #: Called with the pid of each of its processes once that process has exited.
    on_exit: Callable[[int], None] | None = field(default=None, repr=False)
    process: asyncio.subprocess.Process | None = None
    status: ProcessStatus = field(init=False)
    logs: LogPump | None = field(default=None, repr=False)
    _log_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.group = self.group or self.name
        self.status = ProcessStatus(self.name, self.group, self.model)


class Supervisor:
    def __init__(
        self, children: list[Child], *, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
        stop_timeout_s: float = 8.0, fast_exit_s: float = 30.0, max_fast_failures: int = 3,
        recent_lines: int = 30, max_line_bytes: int = 16 * 1024, status_file: StatusFile | None = None,
    ) -> None:
        self.children = children
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._stop_timeout_s = stop_timeout_s
        self._fast_exit_s = fast_exit_s
        self._max_fast_failures = max_fast_failures
        self._recent_lines = recent_lines
        self._max_line_bytes = max_line_bytes
        self._status_file = status_file
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
        """Restart the child whenever it exits, waiting longer after each quick exit; give up only as the
        module says."""
        status, delay = child.status, self._backoff_s
        while not self._stopping.is_set():
            try:
                await self._spawn(child)
            except OSError as exc:  # fork or exec failed (memory, a missing program): a start that failed at once
                code, why, ran_a_while = None, f"could not be started ({exc})", False
            else:
                assert child.process is not None
                if self._stopping.is_set():  # stop() came while it was starting: run() may have missed it
                    await self._terminate(child)
                    return
                self._update(status, state="running", pid=child.process.pid, backoff_s=None)
                exited = asyncio.ensure_future(child.process.wait())
                ran_a_while = not (await asyncio.wait({exited}, timeout=self._fast_exit_s))[0]
                if ran_a_while:  # healthy again: the next crash starts fresh
                    delay = self._backoff_s
                    self._update(status, fast_failures=0)
                code = await exited
                if child.on_exit is not None:
                    child.on_exit(child.process.pid)
                await self._drain_logs(child)
                why = f"exited with {exit_text(code)}"
            if self._stopping.is_set():
                return
            # A kill (an out-of-memory killer, an operator) says nothing of the program: never a start failure.
            start_failure = not ran_a_while and code != -signal.SIGKILL
            self._update(status, state="backing-off", pid=None, last_exit_code=code, last_exit_at=time.time(),
                         fast_failures=status.fast_failures + start_failure)
            if code == MODEL_BROKEN:  # every start, on every worker, would fail the same way: stop at the first
                where = f"{child.name} ({child.entry})" if child.entry else child.name
                self._give_up(child, f"{where}: {self._model_failure(child)}; stopping everything")
                return
            if self._whole_group_fails(child):
                self._give_up(child, self._give_up_reason(child, why))
                return
            self._update(status, restarts=status.restarts + 1, backoff_s=delay)
            self.say(f"{child.name} {why}; restarting in {delay:.1f}s (restart {status.restarts})")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self._max_backoff_s)

    def _whole_group_fails(self, child: Child) -> bool:
        members = [c for c in self.children if c.group == child.group]
        return child.essential and all(c.status.fast_failures >= self._max_fast_failures for c in members)

    @staticmethod
    def _model_failure(child: Child) -> str:
        """The cause a worker gave as its last word (common.exit_codes), or a plain one if it gave none."""
        for line in reversed(child.logs.recent if child.logs is not None else ()):
            if MODEL_BROKEN_LINE in line:
                return MODEL_BROKEN_LINE + line.split(MODEL_BROKEN_LINE, 1)[1]
        return f"exited with {exit_text(MODEL_BROKEN)}: the model cannot start"

    def _give_up_reason(self, child: Child, why: str) -> str:
        others = [c.name for c in self.children if c.group == child.group and c is not child]
        return (
            f"{child.name} {why} {child.status.fast_failures} times in a row, each within {self._fast_exit_s:g}s "
            f"of starting{', as did ' + ', '.join(others) if others else ''}; giving up and stopping everything"
        )

    def _update(self, status: ProcessStatus, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(status, name, value)
        if self._status_file is not None:
            self._status_file.write([c.status for c in self.children])

    async def _supervise(self, child: Child) -> None:
        try:
            await self._keep_alive(child)
        except Exception as exc:  # a fault of the supervisor itself: stop all rather than run a partial stack
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
        """Supervise until ``stop()`` or a give-up; stop every child, in rank order; 0, or 1 on failure."""
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
        for child in self.children:
            self._update(child.status, state="stopped", pid=None, backoff_s=None)
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
