"""The submit-time check of callback URLs stays quick whatever the resolver does: each distinct host is looked up
once, a lookup with no answer in time means the host does not resolve, and the whole check has a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from jobs.callback_urls import check_at_submit
from jobs.errors import InvalidJob

ANSWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))]


def slow_resolver(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[str]:
    """Make this loop's lookups take ``delay_s`` and answer a public address; the hosts looked up, in order."""
    looked_up: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        looked_up.append(host)
        await asyncio.sleep(delay_s)
        return ANSWER

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return looked_up


async def test_each_distinct_host_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = slow_resolver(monkeypatch, 0.0)
    urls: list[str | None] = [f"https://{host}.example.com/hook/{n}" for n in range(500) for host in ("a", "b")]
    await check_at_submit([*urls, None], allow_private=False, field="jobs[{index}].", resolve_timeout_s=2.0,
                          deadline_s=5.0)
    assert looked_up == ["a.example.com", "b.example.com"]


async def test_a_host_with_no_answer_in_time_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    slow_resolver(monkeypatch, 3600.0)
    started = time.monotonic()
    with pytest.raises(InvalidJob, match=r"^jobs\[1\]\.callback_url: its host 'slow.example.com' does not resolve "
                                         r"\(no answer in 0.1 s\)"):
        await check_at_submit([None, "https://slow.example.com/hook"], allow_private=False, field="jobs[{index}].",
                              resolve_timeout_s=0.1, deadline_s=5.0)
    assert time.monotonic() - started < 1.0


async def test_the_whole_check_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many distinct hosts, each answering within its own timeout, still cannot hold a submit past the deadline."""
    looked_up = slow_resolver(monkeypatch, 0.05)
    urls: list[str | None] = [f"https://host{n}.example.com/hook" for n in range(1000)]
    started = time.monotonic()
    with pytest.raises(InvalidJob, match=r"hosts did not all resolve in 0.3 s \(\d+ distinct hosts checked\)"):
        await check_at_submit(urls, allow_private=False, field="jobs[{index}].", resolve_timeout_s=2.0,
                              deadline_s=0.3)
    assert time.monotonic() - started < 1.0
    assert 1 < len(looked_up) < 1000
