"""A request's body read straight from ASGI, within a size limit, for the proxy and the job routes.

A client that leaves before its body has arrived is ``ClientClosedRequest``
(499 in the logs), never an error of the gateway; a Content-Length that is not
a number is 400.
"""

from __future__ import annotations

from starlette.types import Receive, Scope

from common.asgi_body import BodyAborted, BodyTooLarge, read_asgi_body
from gateway.errors import ClientClosedRequest, MalformedRequest, PayloadTooLarge


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if declared is not None and not declared.isdigit():
        raise MalformedRequest("invalid Content-Length")
    try:
        return await read_asgi_body(receive, declared, limit)
    except BodyTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except BodyAborted as exc:
        raise ClientClosedRequest(str(exc)) from None
