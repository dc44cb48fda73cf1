"""Response headers naming the model that computed an answer: set by workers, passed on by the gateway.

A job's sidecar checks them on every answer of its worker, so rows computed by
another model than the one the job is bound to (its worker restarted with a new
model mid-job) are never stored as the job's result. The name is percent-encoded:
a header value is latin-1, a model's name may be any text.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

MODEL_NAME_HEADER = "x-model-name"
MODEL_VERSION_HEADER = "x-model-version"


def model_headers(name: str, version: str) -> dict[str, str]:
    return {MODEL_NAME_HEADER: urllib.parse.quote(name, safe=""),
            MODEL_VERSION_HEADER: urllib.parse.quote(version, safe="")}


def answering_model(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, version) from an answer's headers; None when it carries none (an older worker, a proxy)."""
    name, version = headers.get(MODEL_NAME_HEADER), headers.get(MODEL_VERSION_HEADER)
    if name is None or version is None:
        return None
    return urllib.parse.unquote(name), urllib.parse.unquote(version)
