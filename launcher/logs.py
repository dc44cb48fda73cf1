"""Copy a child's output to the terminal, line by line, whatever it writes.

The pump must outlive any output: if it stopped reading, the child's pipe
would fill and the child would block on its next log line, for good (a 70 KB
request id in one access-log line did exactly that to the gateway). So it
reads chunks, not lines (asyncio's ``readline`` gives up past 64 KiB), cuts
lines longer than ``max_line_bytes``, decodes any bytes, and keeps draining
even when the terminal cannot be written to.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import BinaryIO

_CHUNK_BYTES = 64 * 1024


class LineSplitter:
    """Bytes in, complete lines out; a line longer than the bound is cut and marked."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._partial = bytearray()
        self._dropped = 0  # bytes of the current line past the bound

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._take(piece)
            lines.append(self._finish())
        self._take(rest)
        return lines

    def flush(self) -> list[bytes]:
        """What is left at end of output, as a last line."""
        return [self._finish()] if self._partial or self._dropped else []

    def _take(self, piece: bytes) -> None:
        room = self._max - len(self._partial)
        self._partial += piece[:room]
        self._dropped += max(0, len(piece) - room)

    def _finish(self) -> bytes:
        line = bytes(self._partial)
        if self._dropped:
            line += f" [... {self._dropped} more bytes cut]".encode()
        self._partial.clear()
        self._dropped = 0
        return line


class LogPump:
    """Prefixes each line of one child's output, writes it out, and keeps the last few."""

    def __init__(self, prefix: str, *, max_line_bytes: int, recent_lines: int, out: BinaryIO | None = None) -> None:
        self._prefix = prefix.encode()
        self._splitter = LineSplitter(max_line_bytes)
        self._out = out if out is not None else sys.stdout.buffer
        #: The child's last lines, decoded: shown when it keeps failing.
        self.recent: collections.deque[str] = collections.deque(maxlen=recent_lines)

    async def run(self, stream: asyncio.StreamReader) -> None:
        """Drain ``stream`` to its end."""
        while True:
            try:
                data = await stream.read(_CHUNK_BYTES)
            except Exception as exc:  # the pipe itself broke: there is nothing left to drain
                self._write([f"[launcher: reading this output failed: {exc!r}]".encode()])
                return
            if not data:
                self._write(self._splitter.flush())
                return
            self._write(self._splitter.feed(data))

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        texts = [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]
        self.recent.extend(texts)
        payload = b"".join(self._prefix + text.encode("utf-8", errors="replace") + b"\n" for text in texts)
        try:
            self._out.write(payload)
            self._out.flush()
        except (OSError, ValueError):  # terminal gone or closed: keep draining so the child never blocks
            pass
