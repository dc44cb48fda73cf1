"""uvicorn's httptools protocol with deadlines for a request's headers and body, a size bound for its
headers, and one socket write per answer.

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

A body has no deadline in uvicorn either: a client that sends a head and then
one byte a second holds its connection for as long as its Content-Length
lasts (for ever, chunked). When a read ends with a body still incomplete, a
second timer is armed (``body_timeout_s``), disarmed once the body is
complete; when it fires the client gets 408 (the JSON error envelope, unless
an answer was already sent) and the connection is closed. A body that comes
with its head, as nearly every one does, never arms it.

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

from gateway.errors import BodyTimedOut, error_body
from gateway.request_body import BODY_TIMED_OUT
from gateway.settings import GatewaySettings


class LimitedHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    body_timeout_s: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._reading_body = False  # a request's head is complete, its body not yet
        self._header_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneSendPerTurn(transport, self.loop)  # type: ignore[assignment]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_body_timer()
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
        if self._reading_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._on_body_timeout)

    def _refuse_head(self) -> None:
        """431, then a lingering close: the client's unread bytes would turn a close into a reset that loses the 431."""
        self._disarm_header_timer()
        self.logger.warning("Request head over %d bytes; closing the connection.", self.max_header_bytes)
        self.transport.write(_closing_answer(431, b"text/plain; charset=utf-8", b"Request headers too large"))
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self._refused = True
        self.transport.write_eof()  # what the client sends now is read and dropped until it closes, or the deadline
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()
        self._reading_body = True

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm_body_timer()
        super().on_message_complete()

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

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _on_body_timeout(self) -> None:
        """408 and close. The request's handler, still reading, sees the client gone and the mark in the
        scope's state, and logs and counts the request as 408 (``gateway.request_body``)."""
        self._body_timer = None
        if self.transport.is_closing():
            return
        self.logger.warning("Request body incomplete after %g s; closing the connection.", self.body_timeout_s)
        state = self.cycle.scope.setdefault("state", {})  # the cycle of the request whose body this is
        state[BODY_TIMED_OUT] = True
        if not self.cycle.response_started:
            message = f"the request body did not arrive within {self.body_timeout_s:g} s"
            body = error_body(BodyTimedOut.code, message, state.get("request_id"))
            self.transport.write(_closing_answer(408, b"application/json", body))
        self.transport.close()


def _closing_answer(status: int, content_type: bytes, body: bytes) -> bytes:
    """A whole answer written by the protocol itself, the connection closing after it."""
    return (STATUS_LINE[status] + b"content-type: " + content_type + b"\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


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


def limited_http_protocol(settings: GatewaySettings) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn as ``http=``, with the settings' bounds."""
    return type(
        "LimitedHttpProtocol", (LimitedHttpProtocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_header_bytes": settings.max_header_bytes,
         "body_timeout_s": settings.body_timeout_s},
    )
