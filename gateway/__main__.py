"""``python -m gateway``: one gateway process under uvicorn (uvloop + httptools).

httptools with a deadline and a size bound on request headers
(gateway/http_protocol.py). In containers the gateway runs under gunicorn
instead (gateway/gunicorn_conf.py).

Accepting under a burst of clients: the kernel completes handshakes into the
listen queue (``BACKLOG``, capped by ``net.core.somaxconn``) and the event loop
accepts from it. When the queue is full the kernel drops the SYN and the client
retries after 1, 3, 7 s: the multi-second "connect" waits of an overloaded
server. So the backlog is larger than any burst we expect (uvicorn's default is
2048), and overload is answered at once by the in-flight bound (503 +
Retry-After), not by uvicorn's ``limit_concurrency``: that counts idle
keep-alive connections too, and would refuse a busy client because of idle ones.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from common.draining import CloseWhileDraining, Drain, DrainingServer
from gateway.app import create_app
from gateway.http_protocol import limited_http_protocol
from gateway.settings import GatewaySettings


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    # Access lines are JSON already: print them as they are.
    access = logging.getLogger("gateway.access")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level)
    drain = Drain()
    config = uvicorn.Config(
        CloseWhileDraining(create_app(settings, drain=drain), drain),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=limited_http_protocol(settings),
        backlog=settings.backlog,
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        proxy_headers=False,  # nothing here reads the client address: skip that middleware
    )
    server = DrainingServer(config, drain, settings.drain_s)
    if settings.listen_fd is None:
        server.run()
    else:
        server.run(sockets=[socket.socket(fileno=settings.listen_fd)])


if __name__ == "__main__":
    main()
