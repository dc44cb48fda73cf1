"""JSON routes take JSON: a POST there without a JSON content type is 415 before any worker sees it.

``application/json`` and ``application/<anything>+json`` are JSON, with or
without parameters (``; charset=utf-8``). Only the header is read: bodies are
parsed where they are used (the worker, the job service), never here.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_response

#: The project's own JSON routes. The Open Inference Protocol's infer is not one: it takes JSON or, with
#: ``Inference-Header-Content-Length``, binary tensors, and its clients need send no content type.
JSON_ROUTES = frozenset({"/predict", "/batch_predict", "/jobs"})
_JSON_TYPE = re.compile(rb"\s*application/(?:[\w.+-]*\+)?json\s*(?:;.*)?", re.I | re.S)


def is_json(content_type: bytes | None) -> bool:
    if content_type == b"application/json":  # what nearly every client sends: no regex
        return True
    return content_type is not None and _JSON_TYPE.fullmatch(content_type) is not None


class RequireJson:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in JSON_ROUTES:
            content_type = next((value for name, value in scope["headers"] if name == b"content-type"), None)
            if not is_json(content_type):
                given = "no Content-Type" if content_type is None else repr(content_type[:100].decode("latin-1"))
                response = error_response(
                    415, "unsupported_media_type", f"this route takes JSON: send Content-Type: application/json "
                    f"(got {given})", scope.setdefault("state", {}).get("request_id"),
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
