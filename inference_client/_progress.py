"""A one-line progress bar for ``wait`` on a terminal.

Hand-written: the client depends on httpx and pydantic only, and this needs no more than
redrawing one line on stderr.
"""

from __future__ import annotations

from typing import TextIO

WIDTH = 30


class ProgressBar:
    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self._drawn = 0  # length of the line on screen

    def draw(self, done: int, total: int | None, state: str) -> None:
        if total:
            filled = WIDTH * min(done, total) // total
            text = f"{self.label} [{'#' * filled}{'-' * (WIDTH - filled)}] {done}/{total} {state}"
        else:
            text = f"{self.label} {done} done, {state}"
        self.stream.write("\r" + text.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(text)

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
