"""A request's body read straight from ASGI, within a size limit, for the proxy and the job routes.

A declared Content-Length over the limit is refused before a byte is read; a
body that grows past it while arriving too (chunked, or a lying header). A
client that leaves before its body has arrived is ``ClientClosedRequest``
(499 in the logs), never an error of the gateway.
"""

from __future__ import annotations

from starlette.types import Receive, Scope

from gateway.errors import ClientClosedRequest, MalformedRequest, PayloadTooLarge


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if declared is not None:
        if not declared.isdigit():
            raise MalformedRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared.decode()} bytes; the limit is {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest(f"the client closed the connection after {size} bytes of the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
