"""Request heads are bounded in time and size and bodies in time (raw sockets against a real gateway), and the
writes of one turn of the loop leave in one send."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from gateway.http_protocol import OneSendPerTurn
from tests.gateway.conftest import gateway_settings, serve_gateway

LIMITS = {"header_timeout_s": 0.3, "max_header_bytes": 4096}


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))


async def test_a_connection_that_never_finishes_its_headers_is_closed(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker, **LIMITS), jobs_settings) as url:
        half, silent = await connect(url), await connect(url)
        half[1].write(b"GET /gateway/he")
        # Without the deadline nothing ever comes back and wait_for raises after 10 s.
        assert await asyncio.wait_for(half[0].read(), 10) == b""
        assert await asyncio.wait_for(silent[0].read(), 10) == b""
        for _, writer in (half, silent):
            writer.close()


async def test_the_deadline_is_rearmed_after_each_answer_on_a_kept_alive_connection(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker, **LIMITS), jobs_settings) as url:
        reader, writer = await connect(url)
        writer.write(b"GET /gateway/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /gateway/he")  # a second request that never completes
        assert b"HTTP/1.1" not in await asyncio.wait_for(reader.read(), 10)
        writer.close()


async def test_a_slow_answer_is_not_cut_by_the_header_deadline(worker, jobs_settings) -> None:
    worker.delay_s = 0.6  # longer than the header deadline: the deadline is for reading headers only
    async with serve_gateway(gateway_settings(worker, **LIMITS), jobs_settings) as url:
        reader, writer = await connect(url)
        body = b'{"input_data": [1, 2, 3, 4], "padding": "' + b"p" * 50_000 + b'"}'
        for _ in range(2):
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = next(line for line in head.split(b"\r\n") if line.startswith(b"content-length"))
            await reader.readexactly(int(length.split(b":")[1]))
        writer.close()


async def test_headers_over_the_bound_are_431_and_the_connection_closes(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker, **LIMITS), jobs_settings) as url:
        reader, writer = await connect(url)
        writer.write(b"GET /gateway/health HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + b"a" * 5_000)
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b"Request headers too large")
        writer.close()


PREDICT_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"


async def test_a_body_that_stops_arriving_is_408_and_the_connection_closes(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker, body_timeout_s=0.3), jobs_settings) as url:
        reader, writer = await connect(url)
        writer.write(PREDICT_HEAD % 100 + b"X-Request-ID: slow-1\r\n\r\n" + b'{"input_data"')
        # Without the deadline the gateway waits for the other 87 bytes for ever and wait_for raises.
        answer = await asyncio.wait_for(reader.read(), 10)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
        assert orjson.loads(body) == {
            "error": {"code": "request_timeout", "message": "the request body did not arrive within 0.3 s"},
            "request_id": "slow-1",
        }
        writer.close()
        async with httpx.AsyncClient() as client:  # counted as what the client got, not as a client that left
            for _ in range(100):
                if 'route="/predict",status="408"} 1.0' in (metrics := (await client.get(f"{url}/metrics")).text):
                    break
                await asyncio.sleep(0.02)
        assert 'gateway_requests_total{route="/predict",status="408"} 1.0' in metrics and 'status="499"' not in metrics
        # Answered before its body came (415: not JSON), a trickled body still ends at the deadline, with no
        # second answer.
        reader, writer = await connect(url)
        writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nab")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 415 ") and answer.count(b"HTTP/1.1") == 1
        writer.close()


async def test_a_body_in_pieces_within_the_deadline_is_answered(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker, body_timeout_s=2.0), jobs_settings) as url:
        reader, writer = await connect(url)
        body = b'{"input_data": [1, 2, 3, 4]}'
        for _ in range(2):  # the deadline is disarmed once a body is complete, and armed anew for the next one
            writer.write(PREDICT_HEAD % len(body) + b"\r\n")
            for piece in (body[:5], body[5:20], body[20:]):
                await asyncio.sleep(0.1)
                writer.write(piece)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = next(line for line in head.split(b"\r\n") if line.startswith(b"content-length"))
            await reader.readexactly(int(length.split(b":")[1]))
        writer.close()


class RecordingTransport:
    """The parts of a transport OneSendPerTurn uses, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"real {name}"


async def test_the_writes_of_one_turn_leave_in_one_send_and_a_close_sends_what_is_held() -> None:
    real = RecordingTransport()
    transport = OneSendPerTurn(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == [] and transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"last")
    transport.close()
    assert real.writes[-1] == b"last" and real.closed
    transport.write(b"after the close")
    await asyncio.sleep(0)
    assert real.writes[-1] == b"last"  # a closed connection gets nothing more
    assert transport.get_extra_info("peername") == "real peername"
