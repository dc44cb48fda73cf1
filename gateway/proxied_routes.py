"""The workers' routes, served as plain ASGI in front of the Starlette app that has the gateway's own.

A proxied request never enters Starlette: its router tried every one of the
gateway's own routes (a regex each) before the catch-all proxy route, and
then built a Request, a Response and two exception-handling layers per
request. Here one set lookup and one regex decide, and the proxy
(gateway/proxy.py) reads the ASGI scope and sends the answer itself.

Only the workers' known routes are proxied (a trailing slash too: the worker
redirects it), and ``/models/{name}/predict`` and ``/models/{name}/batch_predict`` (that
model's pool, gateway/model_paths.py); ``/v2`` and below is the Open Inference Protocol, whose errors
use that protocol's body. A path one of the gateway's own routes has, or any
path under ``/gateway/``, is never proxied. Everything else goes to the
Starlette app: the gateway's own routes, and 404 for an unknown path.
"""

from __future__ import annotations

import re

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_response
from gateway.model_paths import prediction_route
from gateway.protocol import is_protocol_path, protocol_body

WORKER_PATHS = frozenset({"/", "/predict", "/batch_predict", "/health", "/metadata", "/v2"})
WORKER_PREFIXES = ("/v2/",)
PROXIED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_ALLOW = ", ".join(sorted(PROXIED_METHODS))


class ProxiedRoutes:
    def __init__(self, app: ASGIApp, owned: list[BaseRoute], proxy: ASGIApp, protocol_proxy: ASGIApp) -> None:
        """``app`` serves ``owned`` (the gateway's own routes); ``protocol_proxy`` proxies ``/v2``."""
        self._app = app
        self._proxy = proxy
        self._protocol_proxy = protocol_proxy
        # One regex for every owned path (their parameters unnamed): a route's own matches() costs ~1.5 us each.
        patterns = ["^/gateway/", *(re.sub(r"\(\?P<\w+>", "(?:", route.path_regex.pattern) for route in owned)]
        self._owned = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))

    def is_proxied(self, path: str) -> bool:
        if ((path.rstrip("/") or "/") not in WORKER_PATHS and not path.startswith(WORKER_PREFIXES)
                and prediction_route(path) is None):
            return False
        return self._owned.match(path) is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_proxied(scope["path"]):
            await self._app(scope, receive, send)
            return
        protocol = is_protocol_path(scope["path"])
        if scope["method"] not in PROXIED_METHODS:
            headers = {"Allow": _ALLOW}
            response = (
                protocol_body(405, "Method Not Allowed", headers) if protocol else
                error_response(405, "method_not_allowed", "Method Not Allowed", scope["state"]["request_id"],
                               headers=headers)
            )
            await response(scope, receive, send)
            return
        await (self._protocol_proxy if protocol else self._proxy)(scope, receive, send)
