"""The job scenarios of ``make chaos``: jobs submitted while a sidecar is killed, the broker, the store or the
database restarted; each must finish once, right.

Every job is one row of the served model (its /metadata example, scaled)
submitted through the gateway with an Idempotency-Key; a submission the
gateway answers 503 is submitted again after its Retry-After, with the same
key (what inference_client does). Counted: *failed* (a job that ended
failed or cancelled, or a submission answered anything but 202 or 503),
*lost* (accepted, never finished in time), *wrong* (a result that is not
the model's answer for its row), *duplicated* (two submissions given one
job id), the 503s (and any 503 without ``Retry-After`` or the JSON error
body), every other answer that is not a success (a 500 to a status read: the
client reads again, and the row counts it) and the jobs started more than once
(``attempts`` > 1; a redelivered job that had finished is skipped, so not counted).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.example_rows import rows_near
from bench.hammer import comparable, same_answer
from jobs.schema import TERMINAL_STATES

_DONE = TERMINAL_STATES


async def submit_and_check(url: str, jobs: int, trigger: asyncio.Event, timeout_s: float, spread_s: float = 0.0,
                           rows_per_job: int = 1, trigger_after: float = 0.5, at_once: float = 0.5) -> dict[str, Any]:
    """Submit ``jobs`` jobs of ``rows_per_job`` copies of one row, the fraction ``at_once`` of them at once and
    the rest spread evenly over ``spread_s``; set ``trigger`` once the fraction ``trigger_after`` of them is
    answered; wait for each; count the outcomes."""
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        rows = rows_near((await client.get("/metadata")).raise_for_status().json(), 8)
        reference = (await client.post("/batch_predict", json=[{"input_data": r} for r in rows])).raise_for_status()
        expected = [comparable(answer) for answer in reference.json()]
        run = uuid.uuid4().hex[:8]
        gate = asyncio.Semaphore(50)
        submitted = 0
        unavailable = {"POST": 0, "GET": 0, "bad": 0}  # 503s by method; "bad": without Retry-After or the body
        accepted_at: list[float] = []
        redelivered = 0
        errors: Counter[str] = Counter()  # "GET 500": answers that are neither a success nor a 503

        async def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
            """One call, again after Retry-After on 503 and on a dropped connection (until the deadline)."""
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    async with gate:
                        response = await client.request(method, path, **kwargs)
                    if response.status_code != 503 or time.monotonic() > deadline:
                        if response.status_code >= 400 and response.status_code != 503:
                            errors[f"{method} {response.status_code}"] += 1
                        return response
                    unavailable[method] += 1
                    unavailable["bad"] += not _proper_503(response)
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)

        async def one(i: int) -> tuple[str, str | None]:
            nonlocal submitted, redelivered
            await asyncio.sleep(spread_s * max(0.0, i - at_once * jobs) / max(1.0, (1 - at_once) * jobs))
            inputs = [{"input_data": rows[i % len(rows)]}] * rows_per_job
            answer = await send("POST", "/jobs", headers={"Idempotency-Key": f"chaos-{run}-{i}"},
                                json={"task": "batch_predict", "inputs": inputs})
            submitted += 1
            if submitted >= jobs * trigger_after:
                trigger.set()
            if answer.status_code != 202:
                return "failed", f"POST /jobs answered {answer.status_code}"
            accepted_at.append(time.monotonic())
            job_id = answer.json()["job_id"]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                answer = await send("GET", f"/jobs/{job_id}")
                if answer.status_code != 200:
                    continue  # counted in errors; the client reads again
                status = answer.json()
                if status["status"] in _DONE:
                    break
            else:
                return "lost", job_id
            redelivered += status["attempts"] > 1
            if status["status"] != "succeeded":
                return "failed", f"{job_id} {status['status']}: {status.get('error')}"
            result = await send("GET", f"/jobs/{job_id}/result", follow_redirects=True)
            if result.status_code != 200:
                return "failed", f"{job_id} result answered {result.status_code}"
            output = result.json()["output"]
            if not same_answer([comparable(a) for a in output], [expected[i % len(rows)]] * rows_per_job):
                return "wrong", job_id
            return "ok", job_id

        outcomes = await asyncio.gather(*(one(i) for i in range(jobs)))
    ids = [detail for outcome, detail in outcomes if outcome in ("ok", "wrong")]
    counts = {kind: sum(outcome == kind for outcome, _ in outcomes) for kind in ("ok", "failed", "lost", "wrong")}
    counts["duplicated"] = len(ids) - len(set(ids))
    counts["ids"] = ids
    counts["examples"] = [detail for outcome, detail in outcomes if outcome != "ok"][:3]
    counts.update(post_503=unavailable["POST"], get_503=unavailable["GET"], bad_503=unavailable["bad"],
                  redelivered=redelivered, accepted_at=accepted_at, errors=dict(errors))
    return counts


def _proper_503(response: httpx.Response) -> bool:
    """A 503 a client can act on: Retry-After and the project's error body."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return "retry-after" in response.headers and isinstance(error.get("code"), str) and bool(error.get("message"))


async def sidecar_kill_9(url: str, sidecar_pid: int, jobs: int, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Kill -9 a sidecar once half the jobs are submitted; the seconds from the kill to the last job done."""
    halfway = asyncio.Event()
    checking = asyncio.create_task(submit_and_check(url, jobs, halfway, timeout_s))
    await halfway.wait()
    killed_at = time.monotonic()
    os.kill(sidecar_pid, signal.SIGKILL)
    counts = await checking
    return counts, time.monotonic() - killed_at


async def outage(url: str, jobs: int, spread_s: float, down_s: float, stop: Callable[[], None],
                 start: Callable[[], None], timeout_s: float, rows_per_job: int = 1,
                 while_down: Callable[[], Awaitable[Any]] | None = None) -> dict[str, Any]:
    """``stop()`` once a quarter of the jobs is accepted (the first half is sent at once: a backlog is queued
    and running), ``start()`` ``down_s`` later, while the second half is sent over ``spread_s``; ``while_down()``
    runs from the stop on, and ``start()`` waits for it too.

    Answers the counts with ``backlog`` (jobs queued or running as the outage began), ``stop_s`` and
    ``start_s`` (how long ``stop()`` and ``start()`` took), ``first_s`` and ``last_s`` (from ``start()`` called
    to the first job accepted after it, and to the last job done) and ``while_down`` (what it answered).
    """
    quarter = asyncio.Event()
    checking = asyncio.create_task(submit_and_check(url, jobs, quarter, timeout_s, spread_s, rows_per_job, 0.25))
    await quarter.wait()
    backlog = await _unfinished(url)
    stopped_at = time.monotonic()
    await asyncio.to_thread(stop)
    stop_s = time.monotonic() - stopped_at
    during = await asyncio.gather(asyncio.sleep(down_s), while_down() if while_down else asyncio.sleep(0))
    back_at = time.monotonic()  # the restart begins: the service may answer before start() returns
    await asyncio.to_thread(start)
    start_s = time.monotonic() - back_at
    counts = await checking
    first = min((at for at in counts["accepted_at"] if at > back_at), default=float("nan"))
    return {**counts, "backlog": backlog, "stop_s": stop_s, "start_s": start_s, "first_s": first - back_at,
            "last_s": time.monotonic() - back_at, "while_down": during[1]}


async def _unfinished(url: str) -> int:
    """Jobs queued or running (GET /jobs reads only the database, which stays up)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        pages = [await client.get("/jobs", params={"status": state, "limit": 200}) for state in ("queued", "running")]
    return sum(len(page.json()["jobs"]) for page in pages)
