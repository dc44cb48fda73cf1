"""The one place that talks HTTP to workers on the hot path.

It owns the pooled keep-alive connections (aiohttp's ClientSession: measured
several times faster than httpx's AsyncClient as a proxy client under
concurrency, see docs/benchmarks.md) and maps transport failures to the kinds
the retry logic understands.

No request waits for a pooled connection: the proxy counts requests in flight
per worker and sheds past MAX_IN_FLIGHT_PER_WORKER (503 + Retry-After) before
it calls ``send``, and the pool holds at least that many connections per
worker (a settings invariant). So the connect timeout is the socket connect
alone (aiohttp's ``sock_connect``): aiohttp's ``connect`` timeout would also
count the wait for a free connection, and under overload turned that wait
into a 504 that claimed the full deadline had passed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from common.model_headers import MODEL_NAME_HEADER, MODEL_VERSION_HEADER

#: Headers passed from the client to the worker, and back (with the protocol's binary tensor header length).
REQUEST_HEADERS = ("content-type", "accept", "x-request-id", "inference-header-content-length")
RESPONSE_HEADERS = (
    "content-type", "retry-after", "allow", "location", "inference-header-content-length", MODEL_NAME_HEADER,
    MODEL_VERSION_HEADER,
)


class TransportError(Exception):
    """The worker did not answer: the request may be tried on another one."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable): the worker is down."""


class ConnectTimedOut(TransportError):
    """No connection within CONNECT_TIMEOUT_S: a worker with a full accept queue, or unreachable."""


class ConnectionDropped(TransportError):
    """The connection broke before a full response arrived."""


class BadResponse(Exception):
    """The worker answered, but not in HTTP the client can read (e.g. a header over aiohttp's 8 KiB limit)."""


class DeadlineExceeded(Exception):
    """No answer within the request's deadline: not retried."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class WorkerClient:
    def __init__(self, *, connect_timeout_s: float, max_connections_per_worker: int) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_connections_per_worker = max_connections_per_worker
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._max_connections_per_worker, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(
        self, base_url: str, method: str, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> UpstreamResponse:
        assert self._session is not None, "start() first"
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(self._connect_timeout_s, timeout_s))
        started = time.monotonic()
        try:
            async with self._session.request(
                method, base_url + path, data=body or None, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as response:
                payload = await response.read()
                kept = {name: response.headers[name] for name in RESPONSE_HEADERS if name in response.headers}
                if kept.get("location", "").startswith(base_url):  # the worker's own address means nothing here
                    kept["location"] = kept["location"][len(base_url):] or "/"
                return UpstreamResponse(response.status, kept, payload)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect to {base_url}: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            if time.monotonic() - started < timeout_s:
                raise ConnectTimedOut(
                    f"no connection to {base_url} within {min(self._connect_timeout_s, timeout_s):.1f}s"
                ) from exc
            raise DeadlineExceeded(f"{base_url} gave no answer within {timeout_s:.1f}s") from exc
        except aiohttp.ClientResponseError as exc:  # raised for unparsable answers only: no raise_for_status here
            raise BadResponse(f"{base_url} sent an answer that is not valid HTTP: {exc.message[:200]}") from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise DeadlineExceeded(f"{base_url} gave no answer within {timeout_s:.1f}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionDropped(f"{base_url} dropped the connection: {type(exc).__name__}") from exc
