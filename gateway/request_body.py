"""A request's body read straight from ASGI, within a size limit, for the proxy and the job routes.

A client that leaves before its body has arrived is ``ClientClosedRequest``
(499 in the logs), never an error of the gateway; one whose body did not
arrive in time was cut off by the connection's protocol (``BODY_TIMED_OUT`` in
the scope's state; 408, ``gateway.http_protocol``); a Content-Length that is
not a number is 400.
"""

from __future__ import annotations

from starlette.types import Receive, Scope

from common.asgi_body import BodyAborted, BodyTooLarge, read_asgi_body
from gateway.errors import BodyTimedOut, ClientClosedRequest, MalformedRequest, PayloadTooLarge

#: Set in ``scope["state"]`` by the protocol when it cut a body off at its deadline.
BODY_TIMED_OUT = "body_timed_out"


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if declared is not None and not declared.isdigit():
        raise MalformedRequest("invalid Content-Length")
    try:
        return await read_asgi_body(receive, declared, limit)
    except BodyTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except BodyAborted as exc:
        if scope["state"].get(BODY_TIMED_OUT):
            raise BodyTimedOut(f"the request body did not arrive in time ({exc.received} bytes did)") from None
        raise ClientClosedRequest(str(exc)) from None
