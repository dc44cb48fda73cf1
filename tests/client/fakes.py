"""Fakes of the client tests: a scripted gateway (httpx.MockTransport) and one face for both clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from inference_client import AsyncInferenceClient, InferenceClient

Handler = Callable[[httpx.Request], httpx.Response]


def envelope(status: int, code: str, message: str = "it went wrong", request_id: str = "req-1",
             **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers,
                          json={"error": {"code": code, "message": message}, "request_id": request_id})


def job_status(state: str, done: int = 0, total: int | None = 4, error: dict | None = None) -> dict[str, Any]:
    return {"job_id": "j1", "task": "batch_predict", "status": state, "progress": {"done": done, "total": total},
            "attempts": 1, "error": error, "cancel_requested": False, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "status_url": "/jobs/j1", "result_url": "/jobs/j1/result"}


class Gateway:
    """Answers each request with the next of ``answers`` (the last repeats) and records the requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        # A fresh copy each time: a response object is read once.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


class Caller:
    """The same calls on an InferenceClient or an AsyncInferenceClient (each async call in asyncio.run)."""

    def __init__(self, kind: str, gateway: Gateway, **options: Any) -> None:
        self.kind = kind
        client_class = InferenceClient if kind == "sync" else AsyncInferenceClient
        self.client = client_class("http://gateway.test", transport=httpx.MockTransport(gateway), **options)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        if self.kind == "sync":
            return method
        return lambda *args, **kwargs: asyncio.run(method(*args, **kwargs))

    def close(self) -> None:
        if isinstance(self.client, InferenceClient):
            self.client.close()
        else:
            asyncio.run(self.client.aclose())


def callers(kind: str) -> Iterator[Callable[..., Caller]]:
    """Yields a factory of Callers and closes what it made."""
    made: list[Caller] = []

    def make(gateway: Gateway, **options: Any) -> Caller:
        made.append(Caller(kind, gateway, **options))
        return made[-1]

    yield make
    for caller in made:
        caller.close()
