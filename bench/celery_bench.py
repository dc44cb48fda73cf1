"""Celery 5 measured under the job benchmark's rules, on the broker and database our stack uses.

One ``celery worker --pool prefork`` with as many processes as the stack has workers,
each holding the served model (``bench/celery_app.py`` says why in-process); its own
queue and exchange on RabbitMQ (AMQP_URL), results in Redis (REDIS_URL; Celery's
fastest result store) or in a PostgreSQL schema of its own (DATABASE_URL; the same
durability as our job records), all removed after. The client submits from up to
``concurrency`` threads, waits for every result and checks each against the answers
our ``/batch_predict`` gave for the same rows: one task per ``apply_async``, or
``group``s of ``group_size``. A job's time runs from just before its submit to its
result in the client's hands.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy
from celery import Celery, group
from celery.result import AsyncResult

from bench.celery_app import TASK_NAME, make_app
from bench.jobs_bench import summary

REPO = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Seconds between the database backend's reads of a result not ready yet (Celery's default: 0.5).
RESULT_POLL_S = 0.02

Submitted = tuple[float, AsyncResult]


def sqlalchemy_url(database_url: str) -> str:
    """``postgresql://...`` (the jobs' DATABASE_URL) as SQLAlchemy's psycopg2 URL."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        raise ValueError(f"{database_url!r}: the Celery comparison needs a postgresql:// DATABASE_URL")
    return f"postgresql+psycopg2://{rest}"


def _sql(url: str, statement: str) -> None:
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (Linux /proc), as the stack's are counted."""
    total = 0.0
    for each in [str(pid), *Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]:
        with contextlib.suppress(FileNotFoundError):  # exited meanwhile
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


@contextlib.contextmanager
def celery_worker(workers: int, results: str, log_dir: Path, start_timeout_s: float = 300.0
                  ) -> Iterator[tuple[Celery, Callable[[], float]]]:
    """A Celery worker on a queue of its own, its results (``results``: ``postgresql`` or ``redis``) in a
    PostgreSQL schema of its own or in Redis at REDIS_URL (the keys expire after an hour); yields the client's
    app and a function answering the worker's CPU seconds so far. The queue, its exchange and the schema are
    removed after."""
    run = uuid.uuid4().hex[:8]
    queue = f"bench-celery-{run}"
    broker_url = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    env = {"BENCH_CELERY_BROKER_URL": broker_url, "BENCH_CELERY_QUEUE": queue}
    database = sqlalchemy_url(os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"bench_celery_{run}" if results == "postgresql" else None
    if schema is not None:
        _sql(database, f"CREATE SCHEMA {schema}")
        env.update(BENCH_CELERY_RESULTS=f"db+{database}", BENCH_CELERY_SCHEMA=schema)
    else:
        env.update(BENCH_CELERY_RESULTS=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    app = make_app(broker_url, queue, env["BENCH_CELERY_RESULTS"], schema)
    command = [sys.executable, "-m", "bench.celery_worker", "--pool", "prefork",
               "--concurrency", str(workers), "--queues", queue, "--without-gossip", "--without-mingle",
               "--without-heartbeat", "--loglevel", "WARNING"]
    log_file = log_dir / f"celery-worker-{results}.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO, start_new_session=True)
    try:
        _wait_until_it_answers(app, process, log_file, start_timeout_s)
        yield app, lambda: process_tree_cpu_seconds(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)  # warm shutdown: the pool's processes finish and exit too
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
        app.close()
        if schema is not None:
            _sql(database, f"DROP SCHEMA {schema} CASCADE")


def _wait_until_it_answers(app: Celery, process: subprocess.Popen, log_file: Path, timeout_s: float) -> None:
    """One task, answered: the worker is up and its processes have loaded and compiled the model."""
    result = app.send_task(TASK_NAME, args=([],))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last_lines = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"the Celery worker exited with {process.returncode}:\n{last_lines}")
        if result.ready():
            result.get()
            return
        time.sleep(0.2)
    raise TimeoutError(f"the Celery worker did not answer within {timeout_s}s")


def run_celery_jobs(app: Celery, rows: list[Any], expected: list[Any], jobs: int, concurrency: int,
                    group_size: int = 0, timeout_s: float = 600.0) -> dict[str, Any]:
    """Submit ``jobs`` one-row tasks from ``concurrency`` threads at most (``group_size``: in groups of that many),
    wait for all, check every answer; the job benchmark's figures, and the client's CPU ms per job."""

    def one(i: int) -> list[Submitted]:
        submitted = time.time()
        return [(submitted, app.send_task(TASK_NAME, args=([{"input_data": rows[i % len(rows)]}],)))]

    def grouped(first: int) -> list[Submitted]:
        tasks = group([app.signature(TASK_NAME, args=([{"input_data": rows[i % len(rows)]}],))
                       for i in range(first, min(first + group_size, jobs))], app=app)
        submitted = time.time()
        return [(submitted, result) for result in tasks.apply_async().results]

    cpu_before = time.process_time()
    started = time.time()
    deadline = time.monotonic() + timeout_s
    times: list[tuple[float, float]] = []
    # Each submit holds one of the app's pooled broker connections: more threads than the pool has would only
    # wait for one (and for the GIL); 200 threads measured several times slower than 8.
    threads = min(concurrency, app.conf.broker_pool_limit or concurrency)
    with ThreadPoolExecutor(threads, thread_name_prefix="celery-submit") as submitters:
        pending: list[Future[list[Submitted]]] = (
            [submitters.submit(grouped, first) for first in range(0, jobs, group_size)] if group_size
            else [submitters.submit(one, i) for i in range(jobs)])
        index = 0
        for future in pending:  # in submission order, as the results mostly come
            for submitted, result in future.result(timeout=max(0.0, deadline - time.monotonic())):
                output = result.get(timeout=max(0.0, deadline - time.monotonic()), interval=RESULT_POLL_S)
                if [row["prediction"] for row in output] != [expected[index % len(rows)]]:
                    raise RuntimeError(f"task {result.id}: wrong result {output}")
                times.append((submitted, time.time()))
                index += 1
    client_cpu_s = time.process_time() - cpu_before
    return {**summary(times, started), "client_cpu_ms_per_job": round(client_cpu_s * 1000 / jobs, 2)}
