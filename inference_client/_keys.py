"""The calls of keys made at run time and of usage: ``/admin/keys`` (an admin key's) and ``/usage``.

Answers are the gateway's JSON as it is (dicts): the CLI prints them, and the shapes are the ones the gateway
documents (docs/security.md).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from inference_client._calls import Call
from inference_client._exceptions import raise_for_response


def _json(response: httpx.Response) -> Any:
    raise_for_response(response)
    return response.json()


def create_key(name: str, **limits: Any) -> Call[dict[str, Any]]:
    """A new key (``limits``: admin, models, rate_limit_per_s, rows_per_day, rows_per_month, job_rows_per_day);
    the answer's ``key`` is shown this once. Not retried: a retry could make a second key."""
    body = {"name": name, **{field: value for field, value in limits.items() if value is not None}}
    return Call("POST", "/admin/keys", _json, json=body, retry=False)


def list_keys() -> Call[dict[str, Any]]:
    return Call("GET", "/admin/keys", _json)


def revoke_key(key_id: str) -> Call[dict[str, Any]]:
    return Call("DELETE", f"/admin/keys/{quote(key_id, safe='')}", _json)


def usage(by: str = "day", every_key: bool = False) -> Call[dict[str, Any]]:
    """The caller's usage per period and model (``every_key``: every key's, for an admin)."""
    return Call("GET", f"{'/admin/usage' if every_key else '/usage'}?by={quote(by, safe='')}", _json)
