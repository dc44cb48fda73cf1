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
``options`` before anything is queued (422 otherwise), then calls the task's
``check`` with the metadata of the served model, as its workers publish it
(``GET /metadata``), when one is known; the sidecar runs the function and
stores what it returns (JSON) as the result. Raise
:class:`jobs.errors.TaskFailed` for a failure that a retry would repeat; any
other exception is retried up to JOB_MAX_DELIVERIES. Task types outside this
file are registered by importing their module: list it in JOB_TASK_MODULES.

This module imports no JAX and nothing of the worker: ``train`` imports the
served model's class, by the path its worker reports, when it runs in the sidecar.
"""

from __future__ import annotations

import asyncio
import importlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
import jsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field

from common.binary_rows import DATATYPES, pack_row
from common.forwarder import UpstreamResponse
from common.rows import MAX_RANK, NestedNumbers, PredictRow, is_plain_row_envelope, nested_shape
from jobs.coalesce import WorkerRefused
from jobs.errors import InvalidJob, InvalidVersion, TaskFailed
from jobs.registry import Manifest, Registry
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, model_key

T = TypeVar("T")


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
    #: ``await predict(rows, request_id)``: the worker's /batch_predict answers, the rows sent together
    #: with other jobs' (jobs.coalesce); raises WorkerRefused on a 4xx a retry would repeat.
    predict: Callable[[list[dict[str, Any]], str], Awaitable[list[Any]]]
    #: ``await spread(rows, request_id)``: the same answers as a JSON array's bytes (no whitespace around
    #: it), from any worker behind SIDECAR_SPREAD_URL (the own worker when that gateway does not answer;
    #: jobs.spread); None when SIDECAR_SPREAD_URL is unset.
    spread: Callable[[list[dict[str, Any]], str], Awaitable[bytes]] | None = None
    #: The model versions of this deployment (jobs.registry), where a task that makes a version registers it.
    registry: Registry | None = None
    #: The job asked for the version it makes to be activated ("promote": true).
    promote: bool = False


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnyOptions(BaseModel):
    """Options the served model defines; checked against the schema it publishes."""

    model_config = ConfigDict(extra="allow")


TaskFn = Callable[[TaskContext, list[Any]], Awaitable[Any]]
#: ``check(rows, options, metadata)`` raises InvalidJob when the job cannot run on the served model.
CheckFn = Callable[[list[Any], dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class TaskType:
    name: str
    run: TaskFn
    row: type[BaseModel]
    options: type[BaseModel]
    inputs: Literal["required", "optional"]
    check: CheckFn | None = None
    #: ``plain(data)``: the decoded rows as they are when each is exactly what ``row`` accepts unchanged,
    #: else None (then ``row`` validates them and words the refusal). Spares a model object per row.
    plain: Callable[[Any], list[Any] | None] | None = None
    #: It makes a model version, which ``"promote": true`` in the job's body activates.
    promotes: bool = False


TASKS: dict[str, TaskType] = {}


def task(
    name: str, *, row: type[BaseModel], options: type[BaseModel] = NoOptions,
    inputs: Literal["required", "optional"] = "required", check: CheckFn | None = None,
    plain: Callable[[Any], list[Any] | None] | None = None, promotes: bool = False,
) -> Callable[[TaskFn], TaskFn]:
    """Register the decorated function as the task type ``name``."""

    def register(fn: TaskFn) -> TaskFn:
        if name in TASKS:
            raise ValueError(f"task type {name!r} is registered twice")
        TASKS[name] = TaskType(name, fn, row, options, inputs, check, plain, promotes)
        return fn

    return register


def import_task_modules(modules: Iterable[str]) -> None:
    for module in modules:
        importlib.import_module(module)


def input_shape(metadata: dict[str, Any]) -> tuple[int, ...]:
    """The per-row input shape in a model's metadata (its shape without the -1 batch axis)."""
    return tuple(metadata["inputs"][0]["shape"][1:])


def check_rows(rows: list[Any], field: str, shape: tuple[int, ...], datatype: str | None, what: str = "shape") -> None:
    """Each row's ``field`` has ``shape`` and values that fit ``datatype``, as ``/predict`` checks a row (a float
    beyond FP32 is 422 there too): a job that its worker would refuse is refused before it is queued."""
    for i, row in enumerate(rows):
        value = row.get(field) if isinstance(row, dict) else getattr(row, field)
        if (got := nested_shape(value)) != shape:
            raise InvalidJob(f"inputs[{i}].{field}: expected {what} {shape}, got {got}")
        if datatype in DATATYPES:
            try:
                pack_row(value, datatype, len(shape))
            except ValueError as exc:
                raise InvalidJob(f"inputs[{i}].{field}: {exc}") from None


def check_input_data(rows: list[Any], metadata: dict[str, Any]) -> None:
    """Each row's ``input_data`` against the model's input tensor (its per-row shape and datatype)."""
    check_rows(rows, "input_data", input_shape(metadata), metadata["inputs"][0].get("datatype"))


def _check_predict_rows(rows: list[Any], options: dict[str, Any], metadata: dict[str, Any]) -> None:
    check_input_data(rows, metadata)


_NUMBERS = frozenset({int, float})


def _plain_numbers(value: Any, depth: int = 0) -> bool:
    """A number (not a bool) or lists of them nested at most MAX_RANK deep, as ``NestedNumbers`` accepts
    (orjson's numbers are finite already); deeper goes to pydantic, which refuses it without recursing here."""
    if type(value) is list:
        if depth >= MAX_RANK:
            return False
        return set(map(type, value)) <= _NUMBERS or all(_plain_numbers(item, depth + 1) for item in value)
    return type(value) in _NUMBERS


def plain_predict_rows(data: Any) -> list[dict[str, Any]] | None:
    """``data`` itself when every item is a row PredictRow takes unchanged; None otherwise.

    A 100,000-row job spent a third of its sidecar's CPU building and dumping a PredictRow per row.
    """
    if type(data) is not list:
        return None
    for row in data:
        if not is_plain_row_envelope(row) or not _plain_numbers(row["input_data"]):
            return None
    return data


@task("batch_predict", row=PredictRow, check=_check_predict_rows, plain=plain_predict_rows)
async def batch_predict(ctx: TaskContext, rows: list[PredictRow | dict[str, Any]]) -> list[Any] | orjson.Fragment:
    """Rows through the worker's /batch_predict, JOB_CHUNK_ROWS at a time; answers in input order.

    A job of one chunk shares worker calls with other small jobs (``ctx.predict``, SIDECAR_WORKER_CALLS in
    flight). A larger one, with SIDECAR_SPREAD_URL set, sends its chunks there, SIDECAR_SPREAD_CALLS in
    flight, to be spread over every worker (``ctx.spread``), and its result is their answers' bytes spliced
    together, never parsed nor serialised again (a fifth of the sidecar's CPU for a 100,000-row job);
    without it, SIDECAR_WORKER_CALLS of them go to the own worker, keeping its batches full. A 5xx is
    transient: the attempt is retried.
    """
    if ctx.spread is not None and len(rows) > ctx.settings.job_chunk_rows:
        parts = await _in_chunks(ctx, rows, ctx.spread, ctx.settings.sidecar_spread_calls)
        return orjson.Fragment(_spliced(parts))
    parts = await _in_chunks(ctx, rows, ctx.predict, ctx.settings.sidecar_worker_calls)
    return [answer for part in parts for answer in part]


def _spliced(arrays: list[bytes]) -> bytes:
    """JSON arrays' bytes (no whitespace around them) as one array, copied once."""
    pieces: list[bytes | memoryview] = []
    for array in arrays:
        if len(array) > 2:  # "[]" adds nothing
            pieces += (b",", memoryview(array)[1:-1])
    pieces[:1] = [b"["]
    return b"".join([*pieces, b"]"])


async def _in_chunks(ctx: TaskContext, rows: list[PredictRow | dict[str, Any]],
                     predict: Callable[[list[dict[str, Any]], str], Awaitable[T]], calls: int) -> list[T]:
    """``predict``'s answer to each JOB_CHUNK_ROWS rows, in order, ``calls`` of them in flight; a checkpoint
    after each. A chunk refused (WorkerRefused) fails the job, naming its rows."""
    size = ctx.settings.job_chunk_rows
    answers: list[T] = []
    in_flight: deque[tuple[int, int, asyncio.Task[T]]] = deque()

    async def collect() -> None:
        start, count, call = in_flight.popleft()
        try:
            answers.append(await call)
        except WorkerRefused as exc:
            raise TaskFailed(*_worker_error(exc.answer, f"rows {start}..{start + count - 1}")) from None
        await ctx.checkpoint(start + count, len(rows))

    try:
        for start in range(0, len(rows), size):
            chunk = [row if type(row) is dict else row.model_dump() for row in rows[start:start + size]]
            in_flight.append((start, len(chunk), asyncio.create_task(predict(chunk, ctx.job_id))))
            if len(in_flight) >= calls:
                await collect()
        while in_flight:
            await collect()
    finally:
        for _, _, call in in_flight:
            call.cancel()
        await asyncio.gather(*(call for _, _, call in in_flight), return_exceptions=True)
    return answers


def _worker_error(answer: UpstreamResponse, where: str) -> tuple[str, str]:
    """The code and message of a worker's error envelope."""
    try:
        error = orjson.loads(answer.body)["error"]
        return str(error["code"]), f"{where}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return "worker_error", f"{where}: the worker answered {answer.status}"


class TrainRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_data: NestedNumbers = Field(description="One input row, of the served model's input shape.")
    target: NestedNumbers = Field(description="Its target, of the model's target shape (a class index: a number).")


def _check_training(rows: list[Any], options: dict[str, Any], metadata: dict[str, Any]) -> None:
    training = metadata.get("training")
    if training is None:
        raise InvalidJob(f"task: model {metadata['name']!r} has no fit(): it cannot be trained by a job")
    if not rows and not training["default_data"]:
        raise InvalidJob(f"inputs: model {metadata['name']!r} has no default training data; send rows")
    check_input_data(rows, metadata)
    target = training["target"]
    check_rows(rows, "target", tuple(target["shape"]), target.get("datatype"), "target shape")
    try:
        jsonschema.validate(options, training["options_schema"])
    except jsonschema.ValidationError as exc:
        where = "".join(f".{part}" for part in exc.absolute_path)
        raise InvalidJob(f"options{where}: {exc.message}") from None


@task("train", row=TrainRow, options=AnyOptions, inputs="optional", check=_check_training, promotes=True)
async def train(ctx: TaskContext, rows: list[TrainRow]) -> dict[str, Any]:
    """Fit the model this sidecar's worker serves (on its own training data without inputs) and register the
    parameters as its next version (not active); with ``"promote": true``, ask a gateway to activate it and
    wait for the outcome (PROMOTION_TIMEOUT_S at most).

    A retried attempt of a job whose version was registered already does not fit again: it takes that version.
    """
    from worker.contract import load_model_class  # the model's own code: only in the sidecar

    if ctx.registry is None:
        raise TaskFailed("no_registry", "this sidecar has no model registry to register the trained version in")
    metadata = (await ctx.worker.get("/metadata")).raise_for_status().json()
    model = load_model_class(metadata["model_class"])()
    versions = await ctx.registry.versions(model.name)
    manifest = next((v.manifest for v in versions if v.job_id == ctx.job_id and v.source == "train"), None)
    if manifest is None:
        manifest = await _fit_and_register(ctx, model, rows, str(metadata["version"]))
    result: dict[str, Any] = {
        "model_name": model.name,
        "version": manifest.version,
        "trained_from_version": manifest.trained_from,
        "artifact_uri": ctx.store.uri_for_key(model_key(model.name, manifest.version, "")),
        "files": [entry.name for entry in manifest.files],
        "rows": manifest.metrics.get("rows"),
    }
    if ctx.promote:
        error = await _promote(ctx, ctx.registry, manifest)
        result |= {"promoted": error is None, "promotion_error": error}
    return result


async def _fit_and_register(ctx: TaskContext, model: Any, rows: list[TrainRow], served: str) -> Manifest:
    """``model.fit`` on ``rows`` (or its own data), its parameters saved and registered as a new version."""
    import tempfile
    import time
    from pathlib import Path

    from worker.train import fit_checked

    assert ctx.registry is not None
    data = (([row.input_data for row in rows], [row.target for row in rows]) if rows
            else model.training_data())
    if data is None:
        raise TaskFailed("invalid_input", f"model {model.name!r} has no default training data; send rows")
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        # On the training thread: a cancel raised here stops the fit at its next call.
        asyncio.run_coroutine_threadsafe(ctx.checkpoint(done, total), loop).result()

    started = time.monotonic()
    try:
        params = await asyncio.to_thread(fit_checked, model, data[0], data[1], ctx.options.model_dump(), progress)
    except ValueError as exc:
        raise TaskFailed("invalid_input", str(exc)) from None
    fit_s = round(time.monotonic() - started, 3)
    with tempfile.TemporaryDirectory() as folder:
        model.save(params, Path(folder))
        files = {str(path.relative_to(folder)): path.read_bytes()
                 for path in sorted(Path(folder).rglob("*")) if path.is_file()}
    try:
        manifest = await ctx.registry.register(model.name, files, source="train", job_id=ctx.job_id,
                                               trained_from=served, metrics={"rows": len(data[0]), "fit_s": fit_s})
    except InvalidVersion as exc:
        raise TaskFailed("invalid_output", f"model {model.name!r}: save() wrote what cannot be a version: "
                                           f"{exc.message}") from None
    assert manifest is not None  # only a first-start registration may find it is not needed
    return manifest


async def _promote(ctx: TaskContext, registry: Registry, manifest: Manifest) -> str | None:
    """Ask for ``manifest``'s version to be activated and wait for a gateway's outcome: None once it is active,
    else why not. Past PROMOTION_TIMEOUT_S a request no gateway took is withdrawn, so it never happens later."""
    import time

    timeout_s = ctx.settings.promotion_timeout_s
    await registry.request_promotion(manifest.model_name, manifest.version, ctx.job_id)
    deadline = time.monotonic() + timeout_s
    while True:
        done, error = await registry.promotion_outcome(ctx.job_id)
        if done:
            return error
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(ctx.settings.promotion_poll_s, max(0.0, deadline - time.monotonic())))
    await registry.withdraw_promotion(ctx.job_id, f"no gateway took the promotion within {timeout_s:g} s "
                                                  "(PROMOTION_TIMEOUT_S); the version is registered, not active")
    done, error = await registry.promotion_outcome(ctx.job_id)
    if done:
        return error
    return (f"a gateway is still activating version {manifest.version} after {timeout_s:g} s (PROMOTION_TIMEOUT_S); "
            f"GET /models/{manifest.model_name}/versions tells whether it became active")
