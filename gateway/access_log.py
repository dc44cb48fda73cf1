"""Access-log lines gathered in memory and written in batches, so a request costs no write of its own.

One ``logging`` call per request cost ~9 us (a LogRecord, the caller lookup,
the handler's lock) and one write syscall; under load that was ~6 % of the
gateway's CPU. Here a request appends its JSON line to a list; the lines go
to the ``gateway.access`` logger as one record (lines joined by newlines)
``flush_s`` after the first line of a batch, when ``max_lines`` are waiting,
and at shutdown and interpreter exit, so logging's configuration still
decides where they go (``python -m gateway`` prints them as they are). At
most ``flush_s`` of lines are lost if the process is killed outright.
"""

from __future__ import annotations

import asyncio
import atexit
import logging

access_logger = logging.getLogger("gateway.access")


class AccessLog:
    def __init__(self, *, flush_s: float, max_lines: int, logger: logging.Logger = access_logger) -> None:
        self._flush_s = flush_s
        self._max_lines = max_lines
        self._logger = logger
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def enabled(self) -> bool:
        """Whether the logger takes info lines (LOG_LEVEL): if not, building a line is wasted."""
        return self._logger.isEnabledFor(logging.INFO)

    def add(self, line: bytes) -> None:
        """Queue one line (UTF-8, no newline); written within ``flush_s``."""
        self._lines.append(line)
        if len(self._lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            # Not logger.info: whether a line is logged was decided when it was added (``enabled``).
            self._logger.handle(self._logger.makeRecord(
                self._logger.name, logging.INFO, __file__, 0, b"\n".join(lines).decode(), (), None))

    def open(self) -> None:
        """Flush at interpreter exit too: a crash that skips the app's shutdown still writes the last lines."""
        atexit.register(self.flush)

    def close(self) -> None:
        atexit.unregister(self.flush)
        self.flush()
