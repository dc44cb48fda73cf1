"""The one place that talks HTTP to workers on the hot path.

It owns the pooled keep-alive connections (aiohttp's ClientSession: measured
several times faster than httpx's AsyncClient as a proxy client under
concurrency, see docs/benchmarks.md) and maps transport failures to three
kinds the retry logic understands.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

#: Headers passed from the client to the worker, and back.
REQUEST_HEADERS = ("content-type", "accept", "x-request-id")
RESPONSE_HEADERS = ("content-type", "retry-after")


class TransportError(Exception):
    """The worker did not answer: the request may be tried on another one."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable): the worker is down."""


class ConnectionDropped(TransportError):
    """The connection broke before a full response arrived."""


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
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(self._connect_timeout_s, timeout_s))
        try:
            async with self._session.request(
                method, base_url + path, data=body or None, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as response:
                payload = await response.read()
                kept = {name: response.headers[name] for name in RESPONSE_HEADERS if name in response.headers}
                return UpstreamResponse(response.status, kept, payload)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect to {base_url}: {exc.os_error}") from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise DeadlineExceeded(f"{base_url} gave no answer within {timeout_s:.1f}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionDropped(f"{base_url} dropped the connection: {type(exc).__name__}") from exc
