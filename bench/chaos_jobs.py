"""The job scenarios of ``make chaos``: jobs submitted while a sidecar is killed, each must finish once, right.

Every job is one row of the served model (its /metadata example, scaled)
submitted through the gateway with an Idempotency-Key; a submission the
gateway answers 503 is submitted again after its Retry-After, with the same
key (what inference_client does). Counted: *failed* (a job that ended
failed or cancelled), *lost* (accepted, never finished in time), *wrong* (a
result that is not the model's answer for its row), *duplicated* (two
submissions given one job id, or one key given two).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import httpx
import numpy as np

from bench.hammer import comparable, same_answer

_DONE = ("succeeded", "failed", "cancelled")


async def submit_and_check(url: str, jobs: int, halfway: asyncio.Event, timeout_s: float) -> dict[str, Any]:
    """Submit ``jobs`` one-row jobs (``halfway`` is set after half), wait for each, count the outcomes."""
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        example = (await client.get("/metadata")).raise_for_status().json()["example"]["input_data"]
        rows = [(np.asarray(example, dtype=float) * (1 + 0.1 * i)).tolist() for i in range(8)]
        reference = (await client.post("/batch_predict", json=[{"input_data": r} for r in rows])).raise_for_status()
        expected = [comparable(answer) for answer in reference.json()]
        run = uuid.uuid4().hex[:8]
        gate = asyncio.Semaphore(50)
        submitted = 0

        async def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
            """One call, again after Retry-After on 503 and on a dropped connection (until the deadline)."""
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    async with gate:
                        response = await client.request(method, path, **kwargs)
                    if response.status_code != 503 or time.monotonic() > deadline:
                        return response
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)

        async def one(i: int) -> tuple[str, str | None]:
            nonlocal submitted
            answer = await send("POST", "/jobs", headers={"Idempotency-Key": f"chaos-{run}-{i}"},
                                json={"task": "batch_predict", "inputs": [{"input_data": rows[i % len(rows)]}]})
            submitted += 1
            if submitted * 2 >= jobs:
                halfway.set()
            if answer.status_code != 202:
                return "failed", f"POST /jobs answered {answer.status_code}"
            job_id = answer.json()["job_id"]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                status = (await send("GET", f"/jobs/{job_id}")).json()
                if status["status"] in _DONE:
                    break
            else:
                return "lost", job_id
            if status["status"] != "succeeded":
                return "failed", f"{job_id} {status['status']}: {status.get('error')}"
            output = (await send("GET", f"/jobs/{job_id}/result", follow_redirects=True)).json()["output"]
            if not same_answer([comparable(a) for a in output], [expected[i % len(rows)]]):
                return "wrong", job_id
            return "ok", job_id

        outcomes = await asyncio.gather(*(one(i) for i in range(jobs)))
    ids = [detail for outcome, detail in outcomes if outcome in ("ok", "wrong")]
    counts = {kind: sum(outcome == kind for outcome, _ in outcomes) for kind in ("ok", "failed", "lost", "wrong")}
    counts["duplicated"] = len(ids) - len(set(ids))
    counts["examples"] = [detail for outcome, detail in outcomes if outcome != "ok"][:3]
    return counts


async def sidecar_kill_9(url: str, sidecar_pid: int, jobs: int, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Kill -9 a sidecar once half the jobs are submitted; the seconds from the kill to the last job done."""
    halfway = asyncio.Event()
    checking = asyncio.create_task(submit_and_check(url, jobs, halfway, timeout_s))
    await halfway.wait()
    killed_at = time.monotonic()
    os.kill(sidecar_pid, signal.SIGKILL)
    counts = await checking
    return counts, time.monotonic() - killed_at
