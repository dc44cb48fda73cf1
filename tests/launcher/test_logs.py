"""The log pump survives any output: long lines are cut, any bytes decode, a closed terminal is ignored."""

from __future__ import annotations

import asyncio
import io

from launcher.logs import LineSplitter, LogPump


def test_lines_are_split_across_chunks() -> None:
    splitter = LineSplitter(max_line_bytes=100)
    assert splitter.feed(b"first\nsec") == [b"first"]
    assert splitter.feed(b"ond\n\nthi") == [b"second", b""]
    assert splitter.flush() == [b"thi"]
    assert splitter.flush() == []


def test_a_line_over_the_bound_is_cut_and_says_how_much_was_dropped() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b"a" * 6) == []
    assert splitter.feed(b"a" * 70_000 + b"\nnext\n") == [b"a" * 10 + b" [... 69996 more bytes cut]", b"next"]


async def feed_pump(pump: LogPump, *chunks: bytes) -> None:
    stream = asyncio.StreamReader()
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    await pump.run(stream)


async def test_the_pump_prefixes_decodes_any_bytes_and_keeps_the_last_lines() -> None:
    out = io.BytesIO()
    pump = LogPump("w | ", max_line_bytes=1024, recent_lines=2, out=out)
    await feed_pump(pump, b"one\r\ntwo \xff\xfe\n", b"x" * 200_000 + b"\nlast without newline")
    lines = out.getvalue().decode().splitlines()
    assert lines[0] == "w | one"
    assert lines[1] == "w | two \ufffd\ufffd"
    assert lines[2].startswith("w | xxx") and lines[2].endswith("[... 198976 more bytes cut]")
    assert lines[3] == "w | last without newline"
    assert list(pump.recent) == [lines[2][4:], "last without newline"]


class ClosedTerminal(io.RawIOBase):
    def write(self, data: object) -> int:
        raise BrokenPipeError("the terminal went away")


async def test_the_pump_keeps_draining_when_the_terminal_cannot_be_written() -> None:
    pump = LogPump("w | ", max_line_bytes=1024, recent_lines=5, out=ClosedTerminal())
    await feed_pump(pump, b"a\n" * 1000, b"still read\n")
    assert pump.recent[-1] == "still read"
