"""Test-only task types (JOB_TASK_MODULES=tests.client.slow_tasks): one runs until it is cancelled, one fails
its first run."""

from __future__ import annotations

import asyncio
from typing import Any

from common.rows import PredictRow
from jobs.errors import TaskFailed
from jobs.tasks import TaskContext, task

STEPS, STEP_S = 600, 0.05  # at most 30 s
#: Jobs whose first run failed, in this sidecar process.
_FAILED_ONCE: set[str] = set()


@task("until_cancelled", row=PredictRow, inputs="optional")
async def until_cancelled(ctx: TaskContext, rows: list[Any]) -> None:
    for step in range(STEPS):
        await ctx.checkpoint(step, STEPS)  # raises once a cancel was asked for
        await asyncio.sleep(STEP_S)
    raise TaskFailed("not_cancelled", f"no cancel came in {STEPS * STEP_S:.0f}s")


@task("fails_first_run", row=PredictRow, inputs="optional")
async def fails_first_run(ctx: TaskContext, rows: list[Any]) -> list[Any]:
    if ctx.job_id not in _FAILED_ONCE:
        _FAILED_ONCE.add(ctx.job_id)
        raise TaskFailed("first_run", "the first run of this job fails")
    return []
