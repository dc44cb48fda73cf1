"""The worker client against scripted servers: keep-alive, a connection the worker closed, HEAD, chunked, drops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from common.forwarder import BadResponse, ConnectFailed, ConnectionDropped, DeadlineExceeded, WorkerClient
from tests.support import free_port

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
Script = Callable[[int, bytes], bytes | None]  # (request number on this connection, request) -> answer; None: close
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def listening(handler: Handler) -> AsyncIterator[str]:
    """A server on a free port; on exit, waits until every connection's handler has finished."""
    handlers: list[asyncio.Task] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await handler(reader, writer)

    port = free_port()
    listener = await asyncio.start_server(tracked, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)


class ScriptedServer:
    """Reads one request head (and its Content-Length body) at a time and answers what the script says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for number in range(1_000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.script(number, request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[ScriptedServer, str, WorkerClient]]:
    server = ScriptedServer(script)
    client = WorkerClient(connect_timeout_s=1, max_connections_per_worker=4)
    async with listening(server.handle) as url:
        await client.start()
        try:
            yield server, url, client
        finally:
            await client.aclose()


async def test_requests_one_after_another_share_one_connection_and_carry_the_headers() -> None:
    async with serving(lambda n, request: OK) as (server, url, client):
        for _ in range(3):
            answer = await client.send(url, "POST", "/predict?x=1", {"content-type": "application/json"}, b"{}", 5)
            assert (answer.status, answer.headers, answer.body) == (200, {"content-type": "application/json"}, b"{}")
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n")
    assert head[0] == b"POST /predict?x=1 HTTP/1.1"
    assert {b"content-type: application/json", b"content-length: 2", f"host: {url[7:]}".encode()} <= set(head)


async def test_a_connection_the_worker_closed_while_idle_costs_no_error() -> None:
    # The worker closes a kept connection when the next request arrives on it: the client sends it again.
    async with serving(lambda n, request: OK if n == 0 else None) as (server, url, client):
        for _ in range(3):
            assert (await client.send(url, "GET", "/health", {}, b"", 5)).status == 200
    assert (server.connections, len(server.requests)) == (3, 5)  # each reuse refused, then sent on a fresh one


async def test_an_answer_that_asks_to_close_is_not_reused() -> None:
    closing = OK.replace(b"content-length", b"connection: close\r\ncontent-length")
    async with serving(lambda n, request: closing) as (server, url, client):
        for _ in range(2):
            assert (await client.send(url, "GET", "/health", {}, b"", 5)).body == b"{}"
    assert server.connections == 2


async def test_a_head_answer_has_no_body_and_does_not_wait_for_one() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 120\r\n\r\n"
    async with serving(lambda n, request: head_answer) as (_, url, client):
        answer = await client.send(url, "HEAD", "/metadata", {}, b"", 5)
    assert (answer.status, answer.body) == (200, b"")


async def test_a_chunked_answer_is_passed_on_whole() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    async with serving(lambda n, request: chunked) as (_, url, client):
        assert (await client.send(url, "GET", "/", {}, b"", 5)).body == b"abcde"


async def test_a_redirect_to_the_worker_itself_becomes_a_path() -> None:
    def redirect(n: int, request: bytes) -> bytes:
        host = next(line for line in request.split(b"\r\n") if line.startswith(b"host: "))[6:]
        return b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://" + host + b"/predict\r\ncontent-length: 0\r\n\r\n"

    async with serving(redirect) as (_, url, client):
        answer = await client.send(url, "POST", "/predict/", {}, b"{}", 5)
    assert (answer.status, answer.headers["location"]) == (307, "/predict")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", "dropped the connection"),
        (b"NOT HTTP\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nx-padding: " + b"p" * 9000, "head is over 8190 bytes"),
    ],
)
async def test_broken_answers_are_named(answer: bytes, message: str) -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    client = WorkerClient(connect_timeout_s=1, max_connections_per_worker=4)
    async with listening(answer_then_close) as url:
        with pytest.raises((ConnectionDropped, BadResponse), match=message):
            await client.send(url, "GET", "/", {}, b"", 5)
        await client.aclose()


async def test_no_answer_in_time_is_a_deadline_and_a_closed_port_a_connect_failure() -> None:
    hung = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hung.wait()
        writer.close()

    client = WorkerClient(connect_timeout_s=1, max_connections_per_worker=4)
    async with listening(never_answer) as url:
        with pytest.raises(DeadlineExceeded, match="no answer within 0.2s"):
            await client.send(url, "GET", "/", {}, b"", 0.2)
        with pytest.raises(ConnectFailed, match="cannot connect to"):
            await client.send(f"http://127.0.0.1:{free_port()}", "GET", "/", {}, b"", 5)  # nobody listens
        hung.set()
        await client.aclose()
