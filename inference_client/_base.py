"""What the sync and the async client share: settings, headers and the retrying transport."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import httpx
from httpx_retries import Retry, RetryTransport

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "GATEWAY_URL"
API_KEY_ENV = "INFERENCE_API_KEY"
#: Only answers that mean "not now": 502 and 504 come after the gateway's own retries over its workers.
RETRY_STATUSES = (429, 503)
#: Failures before anything was sent, so any request may be sent again.
RETRY_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout)


class ClientBase(ABC):
    """Arguments of both clients.

    ``base_url`` defaults to ``$GATEWAY_URL``, then ``http://127.0.0.1:8080``; ``api_key`` to
    ``$INFERENCE_API_KEY`` and is sent as ``Authorization: Bearer <key>``. Answers 429 and 503 and
    refused connections are retried up to ``max_retries`` times: a ``Retry-After`` is honoured, else
    the wait grows exponentially from ``backoff_factor`` (with jitter); either is capped at ``max_backoff``
    seconds. ``timeout`` is httpx's, per request. ``transport`` replaces httpx's (tests pass a
    ``httpx.MockTransport``); it is wrapped by the retries.
    """

    def __init__(
        self, base_url: str | None = None, *, api_key: str | None = None, timeout: float = 30.0,
        max_retries: int = 4, backoff_factor: float = 0.25, max_backoff: float = 10.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.retry = Retry(
            total=max_retries, backoff_factor=backoff_factor, max_backoff_wait=max_backoff,
            status_forcelist=RETRY_STATUSES, retry_on_exceptions=RETRY_EXCEPTIONS,
            # Every route may be retried: predictions are idempotent, and each job submission carries
            # an Idempotency-Key.
            allowed_methods=("GET", "HEAD", "POST", "DELETE"),
        )
        self._http_kwargs: dict[str, Any] = {
            "base_url": self.base_url,
            "timeout": timeout,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
        }
        self._transport = transport
        self._http = self._open()

    @abstractmethod
    def _open(self) -> Any:
        """The httpx client (sync or async) that sends every call."""

    def _retrying(self, default: type[httpx.BaseTransport] | type[httpx.AsyncBaseTransport]) -> RetryTransport:
        return RetryTransport(transport=self._transport or default(), retry=self.retry)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"
