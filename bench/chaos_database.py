"""The database scenarios of ``make chaos``: the job records' PostgreSQL stopped under job load, and restarted
on an empty data folder.

Every scenario runs on a PostgreSQL of its own (bench/outage_servers.py ``PgServer``: the installed server,
its own cluster, port and folder; never the machine's shared one), which the stack uses as ``DATABASE_URL``.
One PostgreSQL, (RabbitMQ node) and stack per broker serve its outages one after another, each beginning once
the last one's jobs are all done; a stack that is not whole and running at the end of a scenario fails that
row, and the next one gets a new stack (its note says so). Each outage is measured twice:

- *no backlog*: one small job a second is submitted from the stop until 5 s after the restart, so every
  submission meets the outage or its end, and nothing is queued or running as the database goes;
- *backlog*: first ``--db-backlog-jobs`` jobs of ``--db-backlog-rows`` rows each (the served model's example)
  are submitted at once, and the database stops as soon as they are all accepted (the sidecars are working
  through them: the note says how many were queued and running); the trickle too.

Counted as in bench/chaos_jobs.py (a job that ended failed, one never finished, a wrong result, 503s without
``Retry-After``, any other error answer), and paced /predict clients run throughout: the row passes when all
of that is zero and the stack is still running at the end, with no restart but the launcher's own.

The wipe: jobs are run and checked, then the database is stopped and its data folder deleted, and started
again empty, while one small job a second is submitted. Submissions must answer 503 (with ``Retry-After``)
and then 202 again within ``WIPE_BACK_S`` of the empty database accepting connections, never 500, and each
job accepted must finish right. The jobs finished before the wipe went with the data: their records are gone,
so they must answer 404, and are counted as gone, not lost.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_jobs import submit_and_check
from bench.chaos_stack import Row, Stack, predict_note, predict_probe, start_stack, still_running
from bench.hammer import Tally
from bench.outage_servers import PgServer, RabbitNode, rabbitmq_bin
from bench.stack import terminate

WIPE_ROW = "database restarted on an empty data folder (jobs)"
#: Seconds from the wiped database's return within which a submission must be accepted again.
WIPE_BACK_S = 10.0
#: Small jobs a second submitted through each outage.
TRICKLE_PER_S = 1.0
#: Seconds the trickle goes on past the restart.
TRICKLE_AFTER_S = 5.0


def outage_name(down_s: float, backlog: bool, broker: str) -> str:
    return f"database down {down_s:g} s, {'backlog' if backlog else 'no backlog'}, {broker} broker (jobs)"


#: The outage rows of a default run, for the table when the scenarios cannot run.
DATABASE_ROWS = [outage_name(down, backlog, broker) for broker in ("embedded", "rabbitmq") for down in (10, 60)
                 for backlog in (False, True)]


class _Bench:
    """A broker kind's PostgreSQL, RabbitMQ node (for ``rabbitmq``) and stack; :meth:`stack` starts a new stack
    when the last one is not running."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], broker: str, exits: AsyncExitStack) -> None:
        self.args, self.broker, self._exits = args, broker, exits
        self._env = env
        self.pg: PgServer | None = None
        self._stack: Stack | None = None
        self.stacks = 0

    async def start(self) -> _Bench:
        folder = Path(self._exits.enter_context(tempfile.TemporaryDirectory(prefix="chaos-database-")))
        self.pg = PgServer(Path(self.args.log_dir) / f"postgres-{self.broker}-{time.time_ns()}")  # its log, kept
        self._exits.callback(self.pg.close)
        await asyncio.to_thread(self.pg.start)
        self._env = {**self._env, "DATABASE_URL": self.pg.url}
        if self.broker == "rabbitmq":
            node = RabbitNode(folder / "rabbitmq")
            self._exits.callback(node.close)
            await asyncio.to_thread(node.start)
            self._env |= {"AMQP_URL": f"{node.url}?reconnect_interval=1", "JOB_QUEUE": f"chaos-{time.time_ns()}"}
        return self

    async def stack(self) -> Stack:
        if self._stack is not None and self._stack.launcher.poll() is None:
            return self._stack
        if self._stack is not None:
            terminate(self._stack.launcher, timeout_s=30)
        env = {**self._env, "JOBS_DIR": str(Path(self.args.log_dir) / f"jobs-{time.time_ns()}")}
        self._stack = await asyncio.to_thread(start_stack, Path(self.args.log_dir), env, True,
                                              f"launcher-database-{self.broker}-{self.stacks}.log")
        self._exits.callback(terminate, self._stack.launcher, 30)
        self.stacks += 1
        return self._stack


async def database_scenarios(args: argparse.Namespace, env: dict[str, str], outages: bool, wipe: bool,
                             add: Callable[[Row], None]) -> None:
    """The outage rows on each of ``args.db_brokers`` (when ``outages``) and the wipe on the first (when
    ``wipe``); ``add`` is called with each row as it is measured."""
    for index, broker in enumerate(args.db_brokers):
        if broker == "rabbitmq" and rabbitmq_bin() is None:
            for down in args.db_down:
                for backlog in _backlogs(args):
                    add(Row(outage_name(down, backlog, broker), 0, 0, 0, None,
                            "not run: rabbitmq-server is not installed", False))
            continue
        if not outages and not (wipe and index == 0):
            continue
        async with AsyncExitStack() as exits:
            bench = await _Bench(args, env, broker, exits).start()
            if outages:
                for down in args.db_down:
                    for backlog in _backlogs(args):
                        add(await database_outage(bench, down, backlog))
            if wipe and index == 0:
                add(await database_wipe(bench))


def _backlogs(args: argparse.Namespace) -> list[bool]:
    return [case == "with" for case in ("without", "with") if case in args.db_backlog]


async def job_states(url: str) -> dict[str, int]:
    """How many of the 200 newest jobs are queued and running now, from one listing (two filtered ones, read one
    after the other, counted a job that started between them twice)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        jobs = (await client.get("/jobs", params={"limit": 200})).raise_for_status().json()["jobs"]
    return {state: sum(job["status"] == state for job in jobs) for state in ("queued", "running")}


async def database_outage(bench: _Bench, down_s: float, backlog: bool) -> Row:
    """One outage of ``down_s`` seconds on the bench's stack, with or without a backlog of large jobs."""
    assert bench.pg is not None
    stacks_before = bench.stacks
    stack = await bench.stack()
    args, timeout_s = bench.args, down_s + 240
    done = asyncio.Event()
    probe = asyncio.create_task(predict_probe(stack, done))
    checks: list[asyncio.Task[dict[str, Any]]] = []
    try:
        if backlog:
            accepted = asyncio.Event()
            checks.append(asyncio.create_task(submit_and_check(
                stack.url, args.db_backlog_jobs, accepted, timeout_s, rows_per_job=args.db_backlog_rows,
                trigger_after=1.0, at_once=1.0)))
            await _first(accepted, checks[0])
        states = await job_states(stack.url)
        trickle = max(1, round((down_s + TRICKLE_AFTER_S) * TRICKLE_PER_S))
        checks.append(asyncio.create_task(submit_and_check(
            stack.url, trickle, asyncio.Event(), timeout_s, spread_s=down_s + TRICKLE_AFTER_S, at_once=0.0)))
        stopped_at = time.monotonic()
        await asyncio.to_thread(bench.pg.stop)
        stop_s = time.monotonic() - stopped_at
        await asyncio.sleep(down_s)
        back_at = time.monotonic()
        await asyncio.to_thread(bench.pg.start)
        counts = [await check for check in checks]
        last_s = time.monotonic() - back_at
    finally:
        done.set()
        predict = await probe
        for check in checks:
            check.cancel()
    missing = await still_running(stack)
    total = _merged(counts)
    first = min((at for at in total["accepted_at"] if at > back_at), default=float("nan")) - back_at
    jobs = args.db_backlog_jobs * backlog + trickle
    detail = [
        f"{args.db_backlog_jobs} jobs of {args.db_backlog_rows} rows at once, then " if backlog else "",
        f"{trickle} one-row jobs over {down_s + TRICKLE_AFTER_S:g} s from the stop; "
        f"{states['queued']} jobs queued and {states['running']} running as it went (stopping took {stop_s:.1f} s)",
    ]
    if stacks_before and bench.stacks > stacks_before:
        detail.insert(0, "on a new stack (the last scenario's had stopped); ")
    return _row(outage_name(down_s, backlog, bench.broker), jobs, total, predict, missing, "".join(detail),
                [f"first job accepted {first:.1f} s after the restart began", "recovery: restart to last job done"],
                last_s)


async def database_wipe(bench: _Bench) -> Row:
    """Jobs run and checked; the database wiped and started empty under a trickle of submissions."""
    assert bench.pg is not None
    stack = await bench.stack()
    down_s = bench.args.db_wipe_down_s
    done = asyncio.Event()
    probe = asyncio.create_task(predict_probe(stack, done))
    try:
        before = await submit_and_check(stack.url, 10, asyncio.Event(), timeout_s=60)
        await asyncio.to_thread(bench.pg.wipe)
        trickle = round((down_s + 2 * WIPE_BACK_S) * TRICKLE_PER_S)
        check = asyncio.create_task(submit_and_check(stack.url, trickle, asyncio.Event(), timeout_s=180,
                                                     spread_s=down_s + 2 * WIPE_BACK_S, at_once=0.0))
        await asyncio.sleep(down_s)
        back_at = time.monotonic()
        await asyncio.to_thread(bench.pg.start)
        ready_at = time.monotonic()
        counts = await check
        last_s = time.monotonic() - back_at
        gone = await _answers(stack.url, before["ids"])
    finally:
        done.set()
        predict = await probe
    missing = await still_running(stack)
    first = min((at for at in counts["accepted_at"] if at > back_at), default=float("nan")) - ready_at
    first = max(first, 0.0)  # accepted as the server came up, before pg_isready said so
    late = not first <= WIPE_BACK_S or counts["post_503"] == 0 or before["ok"] != 10 or gone.get(404) != 10
    detail = (f"10 jobs run and checked, then the data folder deleted, {down_s:g} s, an empty cluster started "
              f"(starting it took {ready_at - back_at:.1f} s), with {trickle} one-row jobs over "
              f"{down_s + 2 * WIPE_BACK_S:g} s from the wipe; the 10 earlier jobs went with the data: GET answered "
              + ", ".join(f"{n}x {code}" for code, n in sorted(gone.items())))
    row = _row(WIPE_ROW, trickle, counts, predict, missing, detail,
               [f"first job accepted {first:.1f} s after the empty database accepted connections (target: within "
                f"{WIPE_BACK_S:g} s)",
                "recovery: restart to last job done"], last_s)
    row.passed = row.passed and not late
    return row


def _row(name: str, jobs: int, counts: dict[str, Any], predict: Tally, missing: str, detail: str,
         timing: list[str], recovery_s: float) -> Row:
    errors = sum(counts["errors"].values())
    bad = (counts["failed"] + counts["lost"] + counts["wrong"] + counts["duplicated"] + counts["bad_503"] + errors
           + predict.failed(shed_is_failure=True) + predict.wrong + bool(missing))
    note = "; ".join([
        detail,
        f"{len(counts['accepted_at'])} accepted",
        f"{counts['post_503']} POST /jobs and {counts['get_503']} GET answered 503 "
        f"({counts['bad_503']} without Retry-After or the error body)",
        *([f"other errors: {', '.join(f'{n}x {kind}' for kind, n in counts['errors'].items())}"] if errors else []),
        f"{counts['redelivered']} jobs started more than once",
        *timing,
        predict_note(predict),
        "stack running at the end" if not missing else f"stack NOT running at the end: {missing}",
        *([f"e.g. {', '.join(map(str, counts['examples']))}"] if counts["examples"] else []),
    ])
    return Row(name, jobs, counts["failed"], counts["wrong"], recovery_s, note, bad == 0, lost=counts["lost"])


def _merged(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts of several submit_and_check runs as one."""
    total: dict[str, Any] = {"errors": {}, "accepted_at": [], "examples": []}
    for part in counts:
        for key, value in part.items():
            if key == "errors":
                for kind, n in value.items():
                    total["errors"][kind] = total["errors"].get(kind, 0) + n
            elif isinstance(value, list):
                total.setdefault(key, []).extend(value)
            else:
                total[key] = total.get(key, 0) + value
    total["examples"] = total["examples"][:3]
    return total


async def _first(event: asyncio.Event, task: asyncio.Task[Any]) -> None:
    """Wait for ``event``, or for ``task`` to end (its error raised) if it ends first."""
    waiter = asyncio.create_task(event.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done() and not event.is_set():
        task.result()


async def _answers(url: str, ids: list[str]) -> dict[int, int]:
    """The status codes of GET /jobs/{id} for ``ids``, counted."""
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for job_id in ids:
            code = (await client.get(f"/jobs/{job_id}")).status_code
            codes[code] = codes.get(code, 0) + 1
    return codes
