"""A test-only task type that always fails: a poison job (JOB_TASK_MODULES=tests.jobs.failing_tasks)."""

from __future__ import annotations

from typing import Any

from common.rows import PredictRow
from jobs.tasks import TaskContext, task


@task("always_fails", row=PredictRow)
async def always_fails(ctx: TaskContext, rows: list[Any]) -> None:
    raise RuntimeError("this task always fails")
