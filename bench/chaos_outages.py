"""The job-path scenarios of ``make chaos`` that break one process or server: a sidecar killed, the broker or
the store restarted, a sidecar killed while the broker is down.

Each starts a stack of its own with sidecars; paced /predict clients run alongside the jobs (serving must not
notice), and the row fails unless the stack is still whole and running at the end, by the launcher alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.chaos_jobs import outage, sidecar_kill_9
from bench.chaos_stack import SIDECAR, Row, Stack, predict_note, predict_probe, start_stack, still_running
from bench.outage_servers import RabbitNode, S3Server
from bench.stack import children_running, terminate
from jobs.settings import JobsSettings

BROKER_ROW, STORE_ROW = "broker restart (jobs)", "store restart (jobs)"
SIDECAR_BROKER_ROW = "sidecar kill -9 during a broker outage (jobs)"
#: Rows of each job in the outage scenarios: enough that a backlog is queued and running when the outage begins.
ROWS_PER_JOB = 200


async def sidecar_kill(args: argparse.Namespace, env: dict[str, str], jobs: int) -> Row:
    """Its own stack with sidecars (embedded broker, local store): kill -9 one sidecar mid-submission."""
    log_dir = Path(args.log_dir)
    env = {**env, "JOBS_DIR": str(log_dir / f"jobs-{time.time_ns()}"), "EMBEDDED_VISIBILITY_TIMEOUT_S": "3"}
    stack = await asyncio.to_thread(start_stack, log_dir, env, True)
    try:
        counts, recovery = await sidecar_kill_9(stack.url, stack.child_pid(SIDECAR), jobs, timeout_s=120)
    finally:
        terminate(stack.launcher, timeout_s=30)
    bad = counts["failed"] + counts["lost"] + counts["wrong"] + counts["duplicated"]
    note = (f"embedded broker, local store, lease 3 s; {counts['duplicated']} duplicated; recovery: kill to last "
            f"job done" + (f"; e.g. {', '.join(map(str, counts['examples']))}" if counts["examples"] else ""))
    return Row("sidecar kill -9 (jobs)", jobs, counts["failed"], counts["wrong"], recovery, note, bad == 0,
               lost=counts["lost"])


def outage_row(name: str, counts: dict, jobs: int, detail: str) -> Row:
    """A job outage's row: recovery is from the restart to the last job done; 503s are expected; a bad 503, any
    other error answer, a failed /predict or a stack not whole at the end fail the row."""
    predict = counts["predict"]
    errors = sum(counts["errors"].values())
    bad = (counts["failed"] + counts["lost"] + counts["wrong"] + counts["duplicated"] + counts["bad_503"] + errors
           + predict.failed(shed_is_failure=True) + predict.wrong + bool(counts["missing"]))
    note = "; ".join([
        f"{detail} (stopping took {counts['stop_s']:.1f} s, starting {counts['start_s']:.1f} s)",
        f"{counts['backlog']} jobs queued or running as it went down",
        f"{counts['duplicated']} duplicated",
        f"{counts['post_503']} POST /jobs and {counts['get_503']} GET answered 503 "
        f"({counts['bad_503']} without Retry-After or the error body)",
        *([f"other errors: {', '.join(f'{n}x {kind}' for kind, n in counts['errors'].items())}"] if errors else []),
        f"{counts['redelivered']} jobs started twice",
        f"first job accepted {counts['first_s']:.1f} s after the restart began",
        "recovery: restart to last job done",
        predict_note(predict),
        "stack running at the end" if not counts["missing"] else f"stack NOT running at the end: {counts['missing']}",
        *([f"e.g. {', '.join(map(str, counts['examples']))}"] if counts["examples"] else []),
    ])
    return Row(name, jobs, counts["failed"], counts["wrong"], counts["last_s"], note, bad == 0, lost=counts["lost"])


async def _outage_of(args: argparse.Namespace, env: dict[str, str], log_name: str, jobs: int, spread_s: float,
                     down_s: float, stop: Callable[[], None], start: Callable[[], None],
                     while_down: Callable[[Stack], Awaitable[Any]] | None = None,
                     rows_per_job: int = ROWS_PER_JOB) -> dict:
    """A stack of its own with ``env``, under job load and paced /predict, while ``stop`` ... ``down_s`` ...
    ``start`` break a server (and ``while_down(stack)`` runs); the counts, with ``predict`` (its Tally) and
    ``missing`` (what of the stack is not running at the end, "" when it all is)."""
    env = {**env, "JOBS_DIR": str(Path(args.log_dir) / f"jobs-{time.time_ns()}")}
    stack = await asyncio.to_thread(start_stack, Path(args.log_dir), env, True, log_name)
    try:
        done = asyncio.Event()
        probe = asyncio.create_task(predict_probe(stack, done))
        try:
            counts = await outage(stack.url, jobs, spread_s, down_s, stop, start, timeout_s=120 + down_s,
                                  rows_per_job=rows_per_job,
                                  while_down=None if while_down is None else lambda: while_down(stack))
        finally:
            done.set()
            predict = await probe
        return {**counts, "predict": predict, "missing": await still_running(stack)}
    finally:
        terminate(stack.launcher, timeout_s=30)


async def _broker_outage(args: argparse.Namespace, env: dict[str, str], log_name: str, jobs: int, spread_s: float,
                         down_s: float, while_down: Callable[[Stack], Awaitable[Any]] | None = None,
                         rows_per_job: int = ROWS_PER_JOB) -> dict:
    """:func:`_outage_of` on a RabbitMQ node of its own (never the shared one): ``stop_app``, ``down_s``,
    ``start_app``."""
    with tempfile.TemporaryDirectory(prefix="chaos-rabbitmq-") as folder:
        node = RabbitNode(Path(folder))
        await asyncio.to_thread(node.start)
        try:
            env = {**env, "AMQP_URL": f"{node.url}?reconnect_interval=1", "JOB_QUEUE": f"chaos-{time.time_ns()}"}
            return await _outage_of(args, env, log_name, jobs, spread_s, down_s, node.stop_app, node.start_app,
                                    while_down, rows_per_job)
        finally:
            await asyncio.to_thread(node.close)


async def broker_restart(args: argparse.Namespace, env: dict[str, str], jobs: int, spread_s: float,
                         down_s: float) -> Row:
    """RabbitMQ stopped and started again under job load."""
    counts = await _broker_outage(args, env, "launcher-broker.log", jobs, spread_s, down_s)
    return outage_row(BROKER_ROW, counts, jobs,
                      f"own RabbitMQ node; {ROWS_PER_JOB}-row jobs, {jobs // 2} at once and {jobs - jobs // 2} over "
                      f"{spread_s:g} s; stop_app, {down_s:g} s, start_app")


async def kill_sidecars(stack: Stack, at_s: tuple[float, ...]) -> list[str]:
    """kill -9 the newest sidecar process at each of ``at_s`` seconds from now (the second kill meets the one the
    launcher restarted after the first); what was done at each."""
    started, done = time.monotonic(), []
    for at in at_s:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        pids = children_running(stack.launcher.pid, SIDECAR)
        if pids:
            os.kill(max(pids), signal.SIGKILL)
            done.append(f"killed at {at:g} s")
        else:
            done.append(f"none running at {at:g} s")
    return done


async def sidecar_in_broker_outage(args: argparse.Namespace, env: dict[str, str], jobs: int, rows_per_job: int,
                                   spread_s: float, down_s: float, kills_at_s: tuple[float, ...]) -> Row:
    """As :func:`broker_restart` with larger jobs (a backlog queued and running as the broker goes), and a sidecar
    killed (kill -9) at each of ``kills_at_s`` seconds into the outage: the launcher restarts it while the broker
    is still down, so it must start without one."""
    counts = await _broker_outage(args, env, "launcher-sidecar-broker.log", jobs, spread_s, down_s,
                                  lambda stack: kill_sidecars(stack, kills_at_s), rows_per_job)
    return outage_row(SIDECAR_BROKER_ROW, counts, jobs,
                      f"own RabbitMQ node; {rows_per_job}-row jobs, {jobs // 2} at once and {jobs - jobs // 2} over "
                      f"{spread_s:g} s; stop_app, {down_s:g} s, start_app; the newest sidecar "
                      f"{', '.join(counts['while_down'])} into the outage")


async def store_restart(args: argparse.Namespace, env: dict[str, str], jobs: int, spread_s: float,
                        down_s: float, rows_per_job: int = ROWS_PER_JOB, name: str = STORE_ROW) -> Row:
    """A stack whose every job input and result is an S3 object (s3rver, on disk): the server stopped, restarted.

    An outage shorter than the sidecars' SIDECAR_STORE_RETRY_S must also spend no job's deliveries: no job
    started twice."""
    with tempfile.TemporaryDirectory(prefix="chaos-s3-") as folder:
        server = S3Server(Path(folder))
        await asyncio.to_thread(server.start)
        try:
            env = {**env, **server.env, "JOB_INLINE_INPUT_BYTES": "0", "JOB_INLINE_RESULT_BYTES": "0"}
            counts = await _outage_of(args, env, "launcher-store.log", jobs, spread_s, down_s,
                                      server.stop, server.start, rows_per_job=rows_per_job)
        finally:
            await asyncio.to_thread(server.stop)
    window_s = float(env.get("SIDECAR_STORE_RETRY_S", JobsSettings.model_fields["sidecar_store_retry_s"].default))
    row = outage_row(name, counts, jobs,
                     f"s3rver (objects on disk), every input and result in it, embedded broker; {rows_per_job}-row "
                     f"jobs, {jobs // 2} at once and {jobs - jobs // 2} over {spread_s:g} s; s3rver stopped, "
                     f"{down_s:g} s, started")
    if down_s < window_s and counts["redelivered"]:
        row.passed = False
        row.note += f"; target: no job started twice in an outage shorter than SIDECAR_STORE_RETRY_S ({window_s:g} s)"
    return row


def long_store_row(down_s: float) -> str:
    return f"store down {down_s:g} s, backlog (jobs)"


async def store_outages(args: argparse.Namespace, env: dict[str, str], spread_s: float) -> list[Row]:
    """The store down for each of ``--store-down`` seconds, with a backlog of large jobs queued and running as it
    goes: shorter than SIDECAR_STORE_RETRY_S it only delays jobs; longer, it may cost a delivery, never a job."""
    return [await store_restart(args, env, args.db_backlog_jobs, spread_s, down_s, args.db_backlog_rows,
                                long_store_row(down_s))
            for down_s in args.store_down]
