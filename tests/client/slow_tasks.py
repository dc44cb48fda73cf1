"""A test-only task type that runs until it is cancelled (JOB_TASK_MODULES=tests.client.slow_tasks)."""

from __future__ import annotations

import asyncio
from typing import Any

from common.rows import PredictRow
from jobs.errors import TaskFailed
from jobs.tasks import TaskContext, task

STEPS, STEP_S = 600, 0.05  # at most 30 s


@task("until_cancelled", row=PredictRow, inputs="optional")
async def until_cancelled(ctx: TaskContext, rows: list[Any]) -> None:
    for step in range(STEPS):
        await ctx.checkpoint(step, STEPS)  # raises once a cancel was asked for
        await asyncio.sleep(STEP_S)
    raise TaskFailed("not_cancelled", f"no cancel came in {STEPS * STEP_S:.0f}s")
