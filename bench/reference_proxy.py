"""The least a Python proxy can be on this stack: an anchor for the lone request's hop, never a server to use.

``python -m bench.lone_request`` measures the gateway's hop against HAProxy and against this, so that the
gap can be split: what any Python proxy pays (the interpreter, asyncio, one task per request) and what the
gateway's own layers pay on top. It forwards each request round-robin to ``WORKERS`` through the gateway's
own client (common/forwarder.py) and sends the worker's answer back, with nothing else: no retries, no
health checks, no limits, no request id, no metrics, no error handling.

Two ways to serve it, ``SERVER``:

- ``raw``: an asyncio protocol with httptools' request parser and a task per request;
- ``uvicorn``: the same forwarding as an ASGI app under uvicorn, with the gateway's HTTP protocol
  (gateway/http_protocol.py): the difference from ``raw`` is what uvicorn's ASGI cycle costs.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import httptools
import uvicorn
import uvloop
from starlette.types import ASGIApp, Receive, Scope, Send

from common.asgi_body import read_asgi_body
from common.forwarder import UpstreamResponse, WorkerClient
from gateway.http_protocol import limited_http_protocol
from gateway.proxy import send_upstream
from gateway.settings import GatewaySettings

_TIMEOUT_S = 30.0
_MAX_BODY_BYTES = GatewaySettings.model_fields["max_body_bytes"].default


class Forwarder:
    """Round-robin over the workers through the gateway's client; the request's content type passed on."""

    def __init__(self, workers: list[str]) -> None:
        self._client = WorkerClient(connect_timeout_s=5.0, max_connections_per_worker=256)
        self._turn = itertools.cycle(f"http://{address}" for address in workers)

    async def forward(self, method: str, path: str, content_type: str | None, body: bytes) -> UpstreamResponse:
        headers = {"content-type": content_type} if content_type else {}
        return await self._client.send(next(self._turn), method, path, headers, body, _TIMEOUT_S)


class RawProxy(asyncio.Protocol):
    """httptools' callbacks gather a request; a task per request forwards it and writes the answer."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._content_type: bytes | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._url, self._content_type, self._body = b"", None, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._content_type = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("ascii")
        content_type = self._content_type.decode("latin-1") if self._content_type else None
        asyncio.get_running_loop().create_task(
            self._answer(method, self._url.decode("latin-1"), content_type, b"".join(self._body)))

    async def _answer(self, method: str, path: str, content_type: str | None, body: bytes) -> None:
        upstream = await self._forwarder.forward(method, path, content_type, body)
        # The client kept only the headers the gateway passes back (common/forwarder.py).
        head = [f"HTTP/1.1 {upstream.status} -\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in upstream.headers.items()]
        head.append(f"content-length: {len(upstream.body)}\r\n\r\n")
        assert self._transport is not None
        self._transport.write("".join(head).encode("latin-1") + upstream.body)


def asgi_proxy(forwarder: Forwarder) -> ASGIApp:
    """The same forwarding as an ASGI app."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_asgi_body(receive, None, _MAX_BODY_BYTES)
        content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
        await send_upstream(send, await forwarder.forward(scope["method"], scope["path"], content_type, body))

    return app


async def serve_raw(forwarder: Forwarder, host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: RawProxy(forwarder), host, port)
    await server.serve_forever()


def main() -> None:
    forwarder = Forwarder(os.environ["WORKERS"].split(","))
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])
    server = os.environ.get("SERVER", "raw")
    if server == "raw":
        uvloop.run(serve_raw(forwarder, host, port))
    elif server == "uvicorn":
        uvicorn.run(asgi_proxy(forwarder), host=host, port=port, loop="uvloop",
                    http=limited_http_protocol(GatewaySettings()), access_log=False, log_level="warning",
                    proxy_headers=False, lifespan="off")
    else:
        raise SystemExit(f"SERVER must be raw or uvicorn, not {server!r}")


if __name__ == "__main__":
    main()
