"""Access lines are written in batches: after the flush interval, when the buffer is full, and at close."""

from __future__ import annotations

import asyncio
import logging

from gateway.access_log import AccessLog


class Records(logging.Handler):
    """The messages a logger handed on, and an event per write."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.written = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.written.set()


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [handler]
    return logger


async def test_lines_of_one_interval_go_out_together_once_it_has_passed() -> None:
    records = Records()
    log = AccessLog(flush_s=0.05, max_lines=100, logger=logger_with(records, "test.access.interval"))
    log.add(b'{"n":1}')
    log.add(b'{"n":2}')
    assert records.messages == []  # nothing written per request
    await asyncio.wait_for(records.written.wait(), 5)
    assert records.messages == ['{"n":1}\n{"n":2}']


async def test_a_full_buffer_is_written_at_once_and_close_writes_the_rest() -> None:
    records = Records()
    log = AccessLog(flush_s=60, max_lines=2, logger=logger_with(records, "test.access.full"))
    log.open()
    for n in range(3):
        log.add(f'{{"n":{n}}}'.encode())
    assert records.messages == ['{"n":0}\n{"n":1}']
    log.close()
    assert records.messages == ['{"n":0}\n{"n":1}', '{"n":2}']


async def test_lines_are_built_only_when_the_logger_takes_info() -> None:
    logger = logger_with(Records(), "test.access.level")
    log = AccessLog(flush_s=60, max_lines=2, logger=logger)
    assert log.enabled()
    logger.setLevel(logging.WARNING)
    assert not log.enabled()
