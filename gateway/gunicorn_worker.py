"""The uvicorn worker that gunicorn runs in the gateway image: uvicorn's, with the gateway's HTTP protocol.

``gateway/http_protocol.py`` bounds how long a client may take to send its
headers and how large they may be (``HEADER_TIMEOUT_S``, ``MAX_HEADER_BYTES``);
``python -m gateway`` passes it to uvicorn, and this worker does the same under
gunicorn, so the container path has the same limits.
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker

from gateway.http_protocol import limited_http_protocol
from gateway.settings import GatewaySettings


class GatewayWorker(UvicornWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = GatewaySettings()
        # uvicorn_worker builds its uvicorn Config from CONFIG_KWARGS in __init__.
        self.CONFIG_KWARGS = {
            **UvicornWorker.CONFIG_KWARGS,
            "http": limited_http_protocol(settings),
        }
        super().__init__(*args, **kwargs)
