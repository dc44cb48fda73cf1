"""Graceful drain for a uvicorn server: on SIGTERM, go not-ready and close keep-alives before closing the listener.

uvicorn alone, on SIGTERM, stops accepting at once and closes idle
keep-alive connections; a client that sends on one of them at that moment
gets a reset, and a load balancer that has not probed yet keeps sending to a
closed port. ``DrainingServer`` first runs a drain of ``drain_s`` seconds:
``Drain.active`` turns true (readiness answers 503 "draining", so balancers
stop sending), every answer carries ``Connection: close`` (clients open
their next request on a fresh connection, which goes wherever the balancer
or the shared listen socket sends it), and new connections are still served.
Then it stops accepting and lingers ``LINGER_S`` more, so a connection
accepted just before gets its request read and answered (uvicorn's shutdown
closes a connection that has not sent a full request yet, which a client sees
as a reset); then uvicorn's own shutdown runs and finishes what is in flight.
A second signal skips what is left of the drain.
"""

from __future__ import annotations

import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LINGER_S = 0.5


class Drain:
    """Whether the process is draining; shared by the server and the app."""

    def __init__(self) -> None:
        self.active = False


class CloseWhileDraining:
    """ASGI middleware: while draining, every answer asks the client to close its connection."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self._app = app
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self._drain.active:
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self._app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_s = drain_s
        self._drain_until: float | None = None
        self._closed_listeners = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_until is None and self._drain_s > 0:
            self._captured_signals.append(sig)  # re-raised after shutdown: the exit status says which signal
            self._drain.active = True
            self._drain_until = time.monotonic() + self._drain_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        if self._drain_until is not None and now >= self._drain_until and not self._closed_listeners:
            for server in self.servers:
                server.close()  # no new connections; the ones open keep being served
            self._closed_listeners = True
        if self._drain_until is not None and now >= self._drain_until + LINGER_S:
            self.should_exit = True
        return await super().on_tick(counter)
