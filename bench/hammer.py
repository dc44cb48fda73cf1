"""Closed-loop clients that keep score: answers right, wrong, shed (503 + Retry-After) or failed.

The chaos suite's load. Unlike bench/loadgen.py (throughput, wrk) it checks
every answer against the one the served model gives for the same row, keeps
the latency of admitted and shed answers apart, and keeps the first failures
verbatim so a report can say what went wrong. The clients are plain HTTP
clients with keep-alive and no retries: what they see is what a user sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

_HEADERS = {"Content-Type": "application/json"}
_PER_WORKER_FIELDS = ("worker_id", "inference_time_ms")


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without the fields that differ from worker to worker."""
    return {key: value for key, value in answer.items() if key not in _PER_WORKER_FIELDS}


def same_answer(got: Any, expected: Any) -> bool:
    """Equal, numbers within float32 rounding: a row computed in a batch of another size differs in the last bits."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            same_answer(got[key], value) for key, value in expected.items())
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(same_answer, got, expected))
    if isinstance(expected, float) and isinstance(got, (int, float)):
        return bool(np.isclose(got, expected, rtol=1e-4, atol=1e-6))
    return got == expected


@dataclass
class Tally:
    ok: int = 0
    wrong: int = 0
    shed: int = 0
    failures: list[str] = field(default_factory=list)
    ok_seconds: list[float] = field(default_factory=list)
    shed_seconds: list[float] = field(default_factory=list)
    #: Requests answered 200, by worker id.
    by_worker: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.ok + self.wrong + self.shed + len(self.failures)

    def failed(self, shed_is_failure: bool) -> int:
        return len(self.failures) + (self.shed if shed_is_failure else 0)

    @staticmethod
    def percentile_ms(seconds: list[float], q: float) -> float | None:
        return float(np.percentile(seconds, q) * 1000) if seconds else None


async def hammer(
    url: str, row: dict[str, Any], expected: dict[str, Any] | None, clients: int, stop: asyncio.Event,
    timeout_s: float = 30.0, honour_retry_after: bool = False,
) -> Tally:
    """``clients`` loops POSTing ``row`` to ``url``/predict until ``stop``; ``expected``: the right answer.

    After a shed answer a client waits 50 ms, or the whole Retry-After with ``honour_retry_after``
    (as inference_client does).
    """
    tally = Tally()
    body = orjson.dumps(row)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with session.post(f"{url}/predict", data=body, headers=_HEADERS) as response:
                        payload = await response.read()
                        status, retry_after = response.status, response.headers.get("retry-after")
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    if len(tally.failures) < 10_000:
                        tally.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.monotonic() - started
                if status == 200:
                    answer = orjson.loads(payload)
                    if expected is not None and not same_answer(comparable(answer), expected):
                        tally.wrong += 1
                        continue
                    tally.ok += 1
                    tally.ok_seconds.append(elapsed)
                    worker = str(answer.get("worker_id"))
                    tally.by_worker[worker] = tally.by_worker.get(worker, 0) + 1
                elif status == 503 and retry_after is not None:
                    tally.shed += 1
                    tally.shed_seconds.append(elapsed)
                    wait_s = float(retry_after) if honour_retry_after else min(float(retry_after), 0.05)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait_s)
                else:
                    tally.failures.append(f"{status} {payload[:200]!r}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return tally
