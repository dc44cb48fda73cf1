"""``python -m bench.httpx_gateway``: the gateway with httpx's AsyncClient as its proxy client.

Only the benchmark runs this, to compare proxy clients through the same
gateway (``--clients``); production uses ``common.forwarder.WorkerClient``
(its own, on httptools). The class keeps that client's interface and error mapping.
"""

from __future__ import annotations

import httpx

import gateway.app
from common.forwarder import (
    RESPONSE_HEADERS,
    ConnectFailed,
    ConnectionDropped,
    DeadlineExceeded,
    UpstreamResponse,
)


class HttpxWorkerClient:
    def __init__(self, *, connect_timeout_s: float, max_connections_per_worker: int) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_connections_per_worker = max_connections_per_worker
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # httpx limits connections per client, not per host: allow the same total.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=self._max_connections_per_worker * 4,
                              keepalive_expiry=30)
        self._client = httpx.AsyncClient(limits=limits)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(
        self, base_url: str, method: str, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> UpstreamResponse:
        assert self._client is not None, "start() first"
        timeout = httpx.Timeout(timeout_s, connect=min(self._connect_timeout_s, timeout_s))
        try:
            response = await self._client.request(
                method, base_url + path, content=body or None, headers=headers, timeout=timeout
            )
        except httpx.ConnectError as exc:
            raise ConnectFailed(f"cannot connect to {base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(f"{base_url} gave no answer within {timeout_s:.1f}s") from exc
        except httpx.HTTPError as exc:
            raise ConnectionDropped(f"{base_url} dropped the connection: {type(exc).__name__}") from exc
        kept = {name: response.headers[name] for name in RESPONSE_HEADERS if name in response.headers}
        return UpstreamResponse(response.status_code, kept, response.content)


def main() -> None:
    gateway.app.WorkerClient = HttpxWorkerClient  # type: ignore[misc,assignment]
    from gateway.__main__ import main as gateway_main

    gateway_main()


if __name__ == "__main__":
    main()
