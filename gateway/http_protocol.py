"""uvicorn's httptools protocol with a deadline and a size bound for a request's headers, and one socket
write per answer.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but sets no
deadline on reading a request's headers, and its httptools parser takes headers
of any size (13 MB, measured): a client that connects and sends half a request
line holds the connection and its descriptor for ever, and a few thousand such
clients exhaust the gateway. h11's ``h11_max_incomplete_event_size`` bounds
size only, and h11 is several times slower; gunicorn's ``timeout`` is a worker
heartbeat, not a request deadline, and its ``limit_request_field_size`` does not
apply to uvicorn workers.

So this subclass arms a timer when a connection opens and whenever it becomes
idle after an answer, disarms it once a request's headers are complete, and
closes the connection when it fires; and it counts the bytes of each request
head before the parser sees them, answering 431 and closing once there are
more than ``max_header_bytes``.

uvicorn writes an answer's head and its body to the transport separately, and
each write is a send(2) of its own: under the jobs benchmark a quarter of
the gateway's CPU samples were in send(2), a third of them these answers'.
The transport the protocol answers through (``OneSendPerTurn``) holds the
writes of one turn of the event loop and sends them together at the end of
that turn, so a head and its body go in one send.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class HeaderLimitedProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneSendPerTurn(transport, self.loop)  # type: ignore[assignment]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_timer is not None:  # reading a request head: count its bytes before parsing them
            end = (self._tail + data).find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_head()
                return
            self._tail = data[-3:]
        super().data_received(data)

    def _refuse_head(self) -> None:
        """431, then a lingering close: the client's unread bytes would turn a close into a reset that loses the 431."""
        self._disarm_header_timer()
        self.logger.warning("Request head over %d bytes; closing the connection.", self.max_header_bytes)
        message = b"Request headers too large"
        self.transport.write(
            STATUS_LINE[431]
            + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: "
            + str(len(message)).encode() + b"\r\n\r\n" + message
        )
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self._refused = True
        self.transport.write_eof()  # what the client sends now is read and dropped until it closes, or the deadline
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_bytes, self._tail = 0, b""
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class OneSendPerTurn:
    """A transport whose writes within one turn of the event loop leave in one send, at the end of the turn.

    Sending at the end of the turn rather than as soon as an answer is complete is what measured: under load
    the answers of a turn then reach the clients together (1.11-1.39x the /predict req/s at 64 connections in
    alternated runs, docs/benchmarks.md), for 0-0.04 ms more p50 at one connection. Closing sends what is held
    first; flow control (pause_writing) still comes from the real transport, whose buffer the held bytes join
    within the turn. Everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self._send_held)
        self._held.append(data)

    def _send_held(self) -> None:
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.writelines(held)  # uvloop: one vectored send, no copy of a large body

    def close(self) -> None:
        self._send_held()
        self._transport.close()

    def write_eof(self) -> None:
        self._send_held()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def header_limited_protocol(header_timeout_s: float, max_header_bytes: int) -> type[HeaderLimitedProtocol]:
    """The protocol class to give uvicorn as ``http=``, with these bounds."""
    return type(
        "HeaderLimitedProtocol", (HeaderLimitedProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )
