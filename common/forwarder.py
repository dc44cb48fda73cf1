"""The one place that talks HTTP to workers on the hot path: the gateway's, and a sidecar's to a gateway
when it spreads a large job's chunks (jobs/spread.py).

A small HTTP/1.1 client of its own: per worker, a pool of keep-alive
connections, each an asyncio protocol with httptools' response parser (the
parser uvicorn uses), one request at a time. A proxied request is then one
socket write and a few callbacks: measured at ~6 us of CPU per request
against ~100 us through aiohttp's ClientSession (which we used before: URL
objects, header multidicts, payload classes and a task per request), when the
whole gateway spent ~300 us per request (docs/benchmarks.md). It maps
transport failures to the kinds the retry logic understands.

No request waits for a pooled connection: the proxy counts requests in flight
per worker and sheds past MAX_IN_FLIGHT_PER_WORKER (503 + Retry-After) before
it calls ``send``; a request with no idle connection opens one, and at most
``max_connections_per_worker`` idle ones are kept. The connect timeout is the
socket connect alone. A kept connection idle for longer than ``IDLE_S`` is
closed instead of used: the worker (uvicorn) closes idle ones after 5 s, and a
request sent just as it does would be lost. If a reused connection still turns
out closed before any byte of the answer, the request goes once more on a fresh
connection (predictions are idempotent); any other failure is the caller's
to retry on another worker. An answer must carry a Content-Length or be
chunked (uvicorn's always do); one that ends only by closing is a dropped
connection.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from common.model_headers import MODEL_NAME_HEADER, MODEL_VERSION_HEADER

#: Headers passed from the client to the worker, and back (with the protocol's binary tensor header length).
REQUEST_HEADERS = ("content-type", "accept", "x-request-id", "inference-header-content-length")
RESPONSE_HEADERS = (
    "content-type", "retry-after", "allow", "location", "inference-header-content-length", MODEL_NAME_HEADER,
    MODEL_VERSION_HEADER,
    # What an answer cost, for the gateway's usage counts (gateway/usage_control.py reads and drops them).
    "x-rows", "x-inference-time-ms",
)
#: Largest head of a worker's answer (status line and headers); a larger one is not an answer we can pass on.
MAX_RESPONSE_HEAD_BYTES = 8190
#: Longest a kept connection may sit idle before it is closed instead of used (under the worker's 5 s).
IDLE_S = 4.0
_KEPT = frozenset(name.encode() for name in RESPONSE_HEADERS)


class TransportError(Exception):
    """The worker did not answer: the request may be tried on another one."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable): the worker is down."""


class ConnectTimedOut(TransportError):
    """No connection within CONNECT_TIMEOUT_S: a worker with a full accept queue, or unreachable."""


class ConnectionDropped(TransportError):
    """The connection broke before a full response arrived."""


class BadResponse(Exception):
    """The worker answered, but not in HTTP the gateway can pass on (unparsable, or a head over 8190 bytes)."""


class DeadlineExceeded(Exception):
    """No answer within the request's deadline: not retried."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class _HeadTooLarge(Exception):
    """Raised in the parser's header callback, which turns it into its own error."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._head_only = False
        #: Whether any byte of the current answer arrived (a reused connection that got none was closed idle).
        self.received = False
        self._head_bytes = 0  # of the current answer's headers parsed so far; -1 once the head is complete
        self._head_raw = 0  # bytes received while the head is incomplete
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._keep_alive = False

    @property
    def usable(self) -> bool:
        return self._keep_alive and self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's is a Transport

    async def exchange(self, request: bytes, head_only: bool, deadline: float) -> UpstreamResponse:
        """Send ``request`` and wait for the whole answer (``head_only``: a HEAD's, which has no body) until
        ``deadline`` (the loop's clock), past which it raises TimeoutError.

        The deadline is one timer on the answer's future, not ``asyncio.timeout``: that costs a context
        manager, a task lookup and a reschedule per request, on the path a lone request waits for.
        """
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._head_only, self.received, self._keep_alive = head_only, False, False
        self._head_bytes, self._head_raw, self._headers, self._body = 0, 0, {}, []
        timer = loop.call_at(deadline, _expire, waiter)
        self.transport.write(request)
        try:
            return await waiter
        except BaseException:  # timed out, cancelled or broken: its state is unknown, never reuse it
            self.close()
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self._keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            too_large = isinstance(exc.__context__, _HeadTooLarge)
            self._fail(BadResponse(f"its head is over {MAX_RESPONSE_HEAD_BYTES} bytes" if too_large else str(exc)))
            return
        if self._head_bytes >= 0:  # the head is still incomplete: every byte so far is part of it
            self._head_raw += len(data)
            if self._head_raw > MAX_RESPONSE_HEAD_BYTES:
                self._fail(BadResponse(f"its head is over {MAX_RESPONSE_HEAD_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise _HeadTooLarge
        name = name.lower()
        if name in _KEPT:
            self._headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        if self._head_only:  # the parser would wait for the body a HEAD's answer announces but never sends
            self._finish(keep_alive=False)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._head_only:
            self._finish(self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._keep_alive = keep_alive
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._waiter.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers, body))
        if not keep_alive:
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            detail = type(exc).__name__ if exc else "closed"
            self._waiter.set_exception(ConnectionDropped(f"the connection was {detail} before a full answer"))


class _Pool:
    """The idle connections to one worker, most recently used first."""

    def __init__(self, base_url: str, max_idle: int) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.host_header = parts.netloc.encode("latin-1")
        self.max_idle = max_idle
        self.idle: collections.deque[_Connection] = collections.deque()

    def take(self, now: float) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable and now - connection.idle_since < IDLE_S:
                return connection
            connection.close()
        return None

    def give_back(self, connection: _Connection, now: float) -> None:
        if connection.usable and len(self.idle) < self.max_idle:
            connection.idle_since = now
            self.idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class WorkerClient:
    def __init__(self, *, connect_timeout_s: float, max_connections_per_worker: int) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_connections_per_worker = max_connections_per_worker
        self._pools: dict[str, _Pool] = {}

    async def start(self) -> None:
        """Nothing to open up front: connections are made on first use."""

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def send(
        self, base_url: str, method: str, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> UpstreamResponse:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = _Pool(base_url, self._max_connections_per_worker)
        request = _request_bytes(method, path, pool.host_header, headers, body)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout_s
        head_only = method == "HEAD"
        try:
            connection = pool.take(time.monotonic())
            if connection is not None:
                try:
                    upstream = await connection.exchange(request, head_only, deadline)
                except ConnectionDropped:
                    if connection.received:
                        raise
                    connection = None  # closed by the worker while idle: once more, on a fresh connection
            if connection is None:
                connection = await self._connect(pool, base_url, timeout_s, started)
                upstream = await connection.exchange(request, head_only, deadline)
        except TimeoutError:
            raise DeadlineExceeded(f"{base_url} gave no answer within {timeout_s:.1f}s") from None
        except BadResponse as exc:
            raise BadResponse(f"{base_url} sent an answer that is not valid HTTP: {str(exc)[:200]}") from None
        except ConnectionDropped as exc:
            raise ConnectionDropped(f"{base_url} dropped the connection: {exc}") from None
        pool.give_back(connection, time.monotonic())
        location = upstream.headers.get("location")
        if location is not None and location.startswith(base_url):  # the worker's own address means nothing here
            upstream.headers["location"] = location[len(base_url):] or "/"
        return upstream

    async def _connect(self, pool: _Pool, base_url: str, timeout_s: float, started: float) -> _Connection:
        loop = asyncio.get_running_loop()
        remaining = started + timeout_s - loop.time()
        connect_s = min(self._connect_timeout_s, remaining)
        try:
            async with asyncio.timeout(connect_s):
                _, connection = await loop.create_connection(_Connection, pool.host, pool.port)
        except TimeoutError:
            if self._connect_timeout_s < remaining:  # the connect's own limit, not the request's deadline
                raise ConnectTimedOut(f"no connection to {base_url} within {connect_s:.1f}s") from None
            raise
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {base_url}: {exc}") from exc
        return connection


def _expire(waiter: asyncio.Future[UpstreamResponse]) -> None:
    """The answer's deadline passed: its exchange raises TimeoutError (and closes the connection)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _request_bytes(method: str, path: str, host: bytes, headers: dict[str, str], body: bytes) -> bytes:
    """The request as it goes on the wire; header values are the client's, already parsed by the HTTP server."""
    lines = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), b"host: ", host,
             b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
