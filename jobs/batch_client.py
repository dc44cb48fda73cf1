"""``POST /batch_predict`` at a worker or a gateway, as the sidecar's coalescer and spreader send it.

The client is the gateway's own (common/forwarder.py: plain HTTP, one socket
write per call, so the URL is http://), not httpx, which took a third of the
sidecar's CPU samples for one-row jobs and for large ones.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from common.forwarder import UpstreamResponse, WorkerClient

#: Longest wait for a connection (the whole call has WORKER_TIMEOUT_S).
CONNECT_TIMEOUT_S = 2.0


class BatchPredictClient:
    def __init__(self, url: str, api_key: str | None, timeout_s: float, calls: int) -> None:
        """``url``: the base the route is under; ``calls``: most calls in flight (one connection each)."""
        parts = urlsplit(url)
        self._base = f"http://{parts.netloc}"
        self._path = f"{parts.path.rstrip('/')}/batch_predict"
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._client = WorkerClient(connect_timeout_s=CONNECT_TIMEOUT_S, max_connections_per_worker=calls)

    async def send(self, rows: bytes, request_id: str) -> UpstreamResponse:
        """The answer to ``rows`` (a JSON array's bytes), whatever its status; the forwarder's errors raise."""
        headers = {**self._headers, "x-request-id": request_id}
        return await self._client.send(self._base, "POST", self._path, headers, rows, self._timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()
