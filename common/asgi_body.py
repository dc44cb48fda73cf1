"""A request body read straight from ASGI within a size limit: the gateway's and the worker's one reader.

A declared Content-Length over the limit is refused before a byte is read; a
body that grows past it while arriving too (chunked, or a lying header). Each
side turns the two exceptions into its own error envelope.
"""

from __future__ import annotations

from starlette.types import Receive


class BodyTooLarge(Exception):
    """The body is, or was declared, over the limit (413)."""


class BodyAborted(Exception):
    """The client left before its whole body arrived; ``received``: the bytes that did."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the client closed the connection after {received} bytes of the body")
        self.received = received


async def read_asgi_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; ``declared``: the Content-Length header, if a number."""
    if declared is not None and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared.decode()} bytes; the limit is {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyAborted(size)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
