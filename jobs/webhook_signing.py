"""Webhook signatures as the Standard Webhooks specification defines them.

``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")), the key
being the base64 after ``whsec_`` in WEBHOOK_SECRET. Ten lines of ``hmac`` rather than the ``standardwebhooks``
package at run time: the scheme is small and fixed, and the service then needs no extra dependency; the tests
verify every signature with that package, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The signing key of a ``whsec_<base64>`` secret; ValueError naming the format otherwise."""
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except binascii.Error:
        key = b""
    if not secret.startswith(PREFIX) or not 24 <= len(key) <= 64:
        raise ValueError("WEBHOOK_SECRET must be 'whsec_' followed by the base64 of 24 to 64 random bytes")
    return key


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery: the id (the same on every delivery of one webhook), the time of this
    delivery in whole seconds, and the signature of both with the body."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}",
            "content-type": "application/json"}
