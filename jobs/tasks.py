"""Task types: what a job can do. One decorator registers one.

    class ScaleOptions(BaseModel):
        factor: float = 2.0

    @task("scale", row=MyRow, options=ScaleOptions)
    async def scale(ctx: TaskContext, rows: list[MyRow]) -> list[float]:
        out = []
        for i, row in enumerate(rows):
            out.append(row.x * ctx.options.factor)
            await ctx.checkpoint(i + 1, len(rows))   # progress; raises if cancelled
        return out

The gateway validates ``inputs`` against ``row`` and ``options`` against
``options`` before anything is queued (422 otherwise); the sidecar runs the
function and stores what it returns (JSON) as the result. Raise
:class:`jobs.errors.TaskFailed` for a failure that a retry would repeat; any
other exception is retried up to JOB_MAX_DELIVERIES. Task types outside this
file are registered by importing their module: list it in JOB_TASK_MODULES.

This module imports no JAX: ``train`` imports it when it runs, in the sidecar.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict

from jobs.errors import TaskFailed
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, model_key
from worker.schemas import Number, PredictRequest


@dataclass
class TaskContext:
    """What a running task may use."""

    job_id: str
    options: Any  # an instance of the task type's options model
    settings: JobsSettings
    store: ArtifactStore
    worker: httpx.AsyncClient  # base URL: this sidecar's worker
    #: ``await checkpoint(done, total)`` records progress and raises JobCancelled
    #: once a cancel was asked for. Call it between units of work.
    checkpoint: Callable[[int, int], Awaitable[None]]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


TaskFn = Callable[[TaskContext, list[Any]], Awaitable[Any]]


@dataclass(frozen=True)
class TaskType:
    name: str
    run: TaskFn
    row: type[BaseModel]
    options: type[BaseModel]
    inputs: Literal["required", "optional"]


TASKS: dict[str, TaskType] = {}


def task(
    name: str, *, row: type[BaseModel], options: type[BaseModel] = NoOptions,
    inputs: Literal["required", "optional"] = "required",
) -> Callable[[TaskFn], TaskFn]:
    """Register the decorated function as the task type ``name``."""

    def register(fn: TaskFn) -> TaskFn:
        if name in TASKS:
            raise ValueError(f"task type {name!r} is registered twice")
        TASKS[name] = TaskType(name, fn, row, options, inputs)
        return fn

    return register


def import_task_modules(modules: Iterable[str]) -> None:
    for module in modules:
        importlib.import_module(module)


@task("batch_predict", row=PredictRequest)
async def batch_predict(ctx: TaskContext, rows: list[PredictRequest]) -> list[dict[str, Any]]:
    """Rows through the worker's /batch_predict, JOB_CHUNK_ROWS at a time; answers in input order."""
    answers: list[dict[str, Any]] = []
    size = ctx.settings.job_chunk_rows
    for start in range(0, len(rows), size):
        chunk = [row.model_dump() for row in rows[start:start + size]]
        response = await ctx.worker.post(
            "/batch_predict", content=orjson.dumps(chunk),
            headers={"content-type": "application/json", "x-request-id": ctx.job_id},
        )
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise TaskFailed(*_worker_error(response, f"rows {start}..{start + len(chunk) - 1}"))
        response.raise_for_status()  # 5xx: transient, the attempt is retried
        answers.extend(response.json())
        await ctx.checkpoint(len(answers), len(rows))
    return answers


def _worker_error(response: httpx.Response, where: str) -> tuple[str, str]:
    """The code and message of a worker's error envelope."""
    try:
        error = response.json()["error"]
        return str(error["code"]), f"{where}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return "worker_error", f"{where}: the worker answered {response.status_code}"


class TrainRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_data: list[Number] = Field(min_length=4, max_length=4, description="The four Iris features.")
    label: Annotated[int, Strict()] = Field(ge=0, le=2, description="Class index: 0 setosa, 1 versicolor, 2 virginica.")


class TrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_warmup: int = Field(500, ge=1, le=10_000, description="NUTS warm-up iterations.")
    num_samples: int = Field(500, ge=1, le=10_000, description="Posterior samples kept.")
    seed: int = Field(0, ge=0, description="PRNG seed.")


@task("train", row=TrainRow, options=TrainOptions, inputs="optional")
async def train(ctx: TaskContext, rows: list[TrainRow]) -> dict[str, Any]:
    """Fit the default model with NUTS (on the shipped Iris data without inputs); store a new version."""
    import io

    import numpy as np

    from worker import train as trainer
    from worker.model import ARTIFACT_FILE, IrisBayesianLogReg

    if rows:
        x = np.asarray([row.input_data for row in rows], dtype=np.float32)
        y = np.asarray([row.label for row in rows], dtype=np.int32)
    else:
        x, y = trainer.load_iris()
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        # On the sampling thread: a cancel raised here stops the fit at its next chunk.
        asyncio.run_coroutine_threadsafe(ctx.checkpoint(done, total), loop).result()

    options: TrainOptions = ctx.options
    try:
        arrays = await asyncio.to_thread(
            trainer.fit_posterior, x, y, num_warmup=options.num_warmup, num_samples=options.num_samples,
            seed=options.seed, progress=progress,
        )
    except ValueError as exc:
        raise TaskFailed("invalid_input", str(exc)) from None
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    key = model_key(IrisBayesianLogReg.name, ctx.job_id, ARTIFACT_FILE)
    await ctx.store.put(key, buffer.getvalue())
    return {
        "model_name": IrisBayesianLogReg.name,
        "version": ctx.job_id,
        "artifact_uri": ctx.store.uri_for_key(key),
        "rows": int(len(y)),
        "num_samples": options.num_samples,
        "train_accuracy": _accuracy(arrays, x, y),
    }


def _accuracy(arrays: dict[str, Any], x: Any, y: Any) -> float:
    """Accuracy of the posterior mean class probabilities on the training rows."""
    import numpy as np

    z = (x - arrays["feature_mean"]) / arrays["feature_std"]
    logits = np.einsum("nd,sdk->snk", z, arrays["W"]) + arrays["b"][:, None, :]
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return round(float((probs.mean(axis=0).argmax(axis=1) == y).mean()), 4)
