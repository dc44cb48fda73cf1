"""Fixtures of the client tests: both clients over a scripted gateway, and sleeps that only record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from tests.client.fakes import Caller, callers


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every sleep of the retries and of ``wait``, recorded instead of slept."""
    recorded: list[float] = []

    async def asleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(time, "sleep", recorded.append)
    monkeypatch.setattr(asyncio, "sleep", asleep)
    return recorded


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, sleeps: list[float]) -> Iterator[Callable[..., Caller]]:
    """``client(gateway, **options)``: an InferenceClient, then an AsyncInferenceClient, over ``gateway``."""
    yield from callers(request.param)
