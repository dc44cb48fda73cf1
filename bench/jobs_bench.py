"""The job path under load: N small jobs submitted at once, all must succeed with correct results.

    python -m bench.jobs_bench --gateway http://127.0.0.1:8080      # a running stack
    python -m bench.jobs_bench --stack all [--jobs 1000]            # starts its own, per deployment
    python -m bench.jobs_bench --against celery                     # rabbitmq-postgres, bulk, then Celery

``--stack`` runs ``python -m launcher`` (workers + one sidecar each + gateway)
on free loopback ports, once per deployment: ``embedded`` (embedded broker,
SQLite records, local folder), ``rabbitmq-postgres`` (RabbitMQ at AMQP_URL,
default guest@127.0.0.1; PostgreSQL at DATABASE_URL, default
postgres@127.0.0.1/test, in a schema of its own, dropped after; local folder)
and ``rabbitmq-s3`` (the same with an S3 server, moto's, started here).
Each job is one ``batch_predict`` row of the served model; its answer must
equal what ``/batch_predict`` answers for that row. Each job is submitted and
its result asked for with ``GET /jobs/<id>/result?wait=...`` (one request that
returns when the job finished), after ``--warmup-jobs`` (200) run the same way
and not counted: on a fresh stack the first burst also opens the database pools'
connections and prepares their statements, and measured about a tenth slower
than the ones after it. Reported: jobs/s from the first submit to the
last result in the client's hands, and p50 / p99 of submit -> result there.
``--poll`` measures a gateway without ``wait=`` instead: each job's status is
polled (after 1 s, then backing off), and a job's result time is its
``finished_at``, so the polling interval does not add to it. With ``--stack``,
also the CPU milliseconds per job of the gateway, the sidecars and the workers
(summed over the run of the small jobs): a measure of the work per job that
other load on the machine moves much less than the wall-clock rates. Then one job of
``--large-rows`` rows (default 100,000; 0: skip), put in the store and
submitted by ``input_uri``: its rows/s from submit to ``finished_at``, against
the rows/s of the same rows sent to ``/batch_predict`` through the gateway in
JOB_CHUNK_ROWS-row calls, two per worker in flight. The launcher gives its
sidecars SIDECAR_SPREAD_URL (its gateway), so the job's chunks go through the
gateway too, SIDECAR_SPREAD_CALLS (4) in flight; ``SIDECAR_SPREAD_URL=`` in
the environment measures a job on one sidecar's worker instead.

``--bulk-jobs`` one-row jobs (default 10,000 with ``--against``, else none) are
then submitted with ``POST /jobs/batch``, ``--batch-size`` (500) a request,
``--bulk-submitters`` (4) requests in flight (a batch answered 503 is sent
again, as the project's client does), and each result is waited for as above,
``--concurrency`` at a time; a job's time runs from its batch's first submit.
``--against celery`` (the ``celery`` extra; alone it implies ``--stack
rabbitmq-postgres``) then runs Celery 5 once the stacks have stopped, as
``bench/celery_bench.py`` says: the same model, broker, rows and checks,
``--warmup-jobs`` first, ``--jobs`` tasks one per ``apply_async``, then
``--bulk-jobs`` tasks in ``group``s of ``--batch-size`` from ``--bulk-submitters``
threads, once per ``--celery-results`` store (redis: Celery's fastest;
postgresql: as durable as our records); a table sets every rate against
Celery's best.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import uvloop

from bench.example_rows import rows_near
from common.forwarder import TransportError, WorkerClient
from jobs.schema import TERMINAL_STATES

REPO = Path(__file__).resolve().parent.parent
PAIRS = ["embedded", "rabbitmq-postgres", "rabbitmq-s3"]
#: Different rows per job: the served model's example, moved a little each time (bench.example_rows).
ROW_VARIANTS = 8
#: Sends of one POST /jobs/batch answered 503 before the run fails.
BATCH_TRIES = 5
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class GatewayError(RuntimeError):
    """An error status from the gateway."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Gateway:
    """The benchmark's HTTP client: the project's own (common/forwarder.py, about 6 us of CPU per request),
    not aiohttp (about 100 us), which at two requests per job took as much CPU as the sidecars: the client
    shares the two cores with the stack it measures. At most ``in_flight`` requests at a time, save those
    waiting for a result (``gated=False``): each holds its connection until its job finishes."""

    def __init__(self, url: str, in_flight: int, connections: int, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"--gateway {url}: the benchmark speaks plain http:// (loopback) only")
        self.base, self.prefix = f"http://{parts.netloc}", parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._client = WorkerClient(connect_timeout_s=10.0, max_connections_per_worker=connections)
        self._gate = asyncio.Semaphore(in_flight)

    async def __aenter__(self) -> _Gateway:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, *,
                   gated: bool = True, timeout_s: float | None = None) -> Any:
        """One call's JSON answer; an error status raises. A connection refused or dropped (1,000 connecting
        at once overflow a listen backlog) is tried again: safe for POST /jobs too, by its Idempotency-Key."""
        data = b"" if body is None else orjson.dumps(body)
        headers = {**(headers or {}), **({"content-type": "application/json"} if body is not None else {})}
        async with self._gate if gated else contextlib.nullcontext():
            for attempt in range(3):
                try:
                    answer = await self._client.send(self.base, method, self.prefix + path, headers, data,
                                                     timeout_s or self.timeout_s)
                    break
                except TransportError:
                    if attempt == 2:
                        raise
        if answer.status in (302, 303, 307) and "location" in answer.headers:  # a large result, presigned
            async with httpx.AsyncClient(timeout=timeout_s or self.timeout_s) as store:
                return orjson.loads((await store.get(answer.headers["location"])).raise_for_status().content)
        if answer.status >= 400:
            raise GatewayError(f"{method} {path}: {answer.status} {answer.body[:200]!r}", answer.status)
        return orjson.loads(answer.body)


async def example_rows(gateway: _Gateway) -> list[Any]:
    """``ROW_VARIANTS`` rows of the served model's shape and dtype, made from the example its workers publish."""
    return rows_near(await gateway.call("GET", "/metadata"), ROW_VARIANTS)


async def reference_answers(gateway: _Gateway) -> tuple[list[Any], list[Any]]:
    """The rows jobs are made of, and the prediction ``/batch_predict`` answers for each."""
    rows = await example_rows(gateway)
    answers = await gateway.call("POST", "/batch_predict", [{"input_data": row} for row in rows])
    return rows, [answer["prediction"] for answer in answers]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(times: list[tuple[float, float]], started: float) -> dict[str, Any]:
    """The figures of one run from each job's (submitted, result in hand) times: jobs/s from ``started`` to the
    last result, p50 / p99 of submit -> result."""
    latencies = [finished - submitted for submitted, finished in times]
    elapsed = max(finished for _, finished in times) - started
    return {
        "jobs": len(times),
        "succeeded": len(times),
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(len(times) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
    }


async def _waited(client: _Gateway, job_id: str, timeout_s: float) -> tuple[Any, float]:
    """A job's output, asked for with ``wait=``, and when it arrived."""
    while True:
        try:
            output = await client.call("GET", f"/jobs/{job_id}/result?wait={timeout_s}", gated=False,
                                       timeout_s=60 + timeout_s)
            return output["output"], time.time()
        except GatewayError as exc:  # 409: not finished yet, or failed
            status = await client.call("GET", f"/jobs/{job_id}")
            if status["status"] in ("failed", "cancelled", "expired"):
                raise RuntimeError(f"job {job_id} {status['status']}: {status.get('error')}") from exc


def _check(job_id: str, output: Any, expected: Any) -> None:
    if [row["prediction"] for row in output] != [expected]:
        raise RuntimeError(f"job {job_id}: wrong result {output}")


async def run_jobs_bench(gateway: str, jobs: int = 1000, concurrency: int = 200, poll_s: float = 1.0,
                         timeout_s: float = 600.0, wait: bool = True) -> dict[str, Any]:
    """Submit ``jobs`` one-row jobs through ``gateway``, wait for all, check every result.

    ``wait``: each result is asked for with ``wait=`` and timed when it arrives. Otherwise each
    job's status is polled after ``poll_s``, then less and less often (up to 8x), so that polling
    loads the gateway little, and the time is the job's ``finished_at``.
    """
    # Waiting result requests hold a connection each, outside the ``concurrency`` that bounds the others.
    async with _Gateway(gateway, concurrency, concurrency + jobs) as client:
        rows, expected = await reference_answers(client)
        run = uuid.uuid4().hex[:8]

        async def polled(job_id: str) -> tuple[Any, float]:
            wait_s = poll_s
            while True:  # backing off: a long queue is not polled into the ground
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, poll_s * 8)
                status = await client.call("GET", f"/jobs/{job_id}")
                if status["status"] not in ("queued", "running"):
                    break
            if status["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {status['status']}: {status.get('error')}")
            output = (await client.call("GET", f"/jobs/{job_id}/result"))["output"]
            return output, datetime.fromisoformat(status["finished_at"]).timestamp()

        async def one(i: int) -> tuple[float, float]:
            submitted = time.time()
            answer = await client.call("POST", "/jobs", {
                "task": "batch_predict", "inputs": [{"input_data": rows[i % len(rows)]}],
            }, {"idempotency-key": f"bench-{run}-{i}"})
            job_id = answer["job_id"]
            output, finished = await (_waited(client, job_id, timeout_s) if wait else polled(job_id))
            _check(job_id, output, expected[i % len(rows)])
            return submitted, finished

        started = time.time()
        times = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(jobs))), timeout_s)
    return summary(times, started)


async def run_bulk_jobs_bench(gateway: str, jobs: int = 10_000, batch_size: int = 500, submitters: int = 4,
                              concurrency: int = 200, timeout_s: float = 600.0) -> dict[str, Any]:
    """``jobs`` one-row jobs submitted with ``POST /jobs/batch``, ``batch_size`` a request, ``submitters``
    requests in flight; each result asked for with ``wait=`` once its batch is in, ``concurrency`` at a time,
    and checked. A job's time runs from its batch's submit to its result in the client's hands. A batch
    answered 503 (a publish that outlasted JOB_PUBLISH_TIMEOUT_S) is sent again, as the project's client does:
    by their idempotency keys, its queued jobs are replayed and the others queued; the retries are counted."""
    async with _Gateway(gateway, submitters, submitters + concurrency) as client:
        rows, expected = await reference_answers(client)
        run = uuid.uuid4().hex[:8]
        waits = asyncio.Semaphore(concurrency)
        retries = 0

        async def result(i: int, job_id: str, submitted: float) -> tuple[float, float]:
            async with waits:
                output, finished = await _waited(client, job_id, timeout_s)
            _check(job_id, output, expected[i % len(rows)])
            return submitted, finished

        async def batch(first: int) -> list[tuple[float, float]]:
            indexes = range(first, min(first + batch_size, jobs))
            body = {"jobs": [{"task": "batch_predict", "inputs": [{"input_data": rows[i % len(rows)]}],
                              "idempotency_key": f"bench-{run}-{i}"} for i in indexes]}
            submitted = time.time()
            for attempt in range(1, BATCH_TRIES + 1):
                try:
                    answer = await client.call("POST", "/jobs/batch", body)
                    break
                except GatewayError as exc:
                    if exc.status != 503 or attempt == BATCH_TRIES:
                        raise
                    nonlocal retries
                    retries += 1
                    await asyncio.sleep(0.5 * attempt)
            return await asyncio.gather(*(result(i, job_id, submitted)
                                          for i, job_id in zip(indexes, answer["job_ids"], strict=True)))

        started = time.time()
        batches = await asyncio.wait_for(asyncio.gather(*(batch(first) for first in range(0, jobs, batch_size))),
                                         timeout_s)
    return {**summary([each for times in batches for each in times], started), "batch_size": batch_size,
            "submitters": submitters, "batch_retries": retries}


async def run_large_job_bench(gateway: str, upload: Callable[[bytes], str], rows_count: int, workers: int,
                               chunk_rows: int = 256, timeout_s: float = 600.0) -> dict[str, Any]:
    """One ``rows_count``-row job (rows stored by ``upload``, which returns the input_uri) against /batch_predict."""
    async with _Gateway(gateway, 2 * workers, 2 * workers, timeout_s=120) as client:
        variants = await example_rows(client)
        rows = [{"input_data": variants[i % len(variants)]} for i in range(rows_count)]

        async def chunk(start: int) -> int:
            return len(await client.call("POST", "/batch_predict", rows[start:start + chunk_rows]))

        started = time.time()
        answered = sum(await asyncio.gather(*(chunk(i) for i in range(0, rows_count, chunk_rows))))
        direct_s = time.time() - started
        assert answered == rows_count

        uri = upload(orjson.dumps(rows))
        submitted = time.time()
        job_id = (await client.call("POST", "/jobs", {"task": "batch_predict", "input_uri": uri}))["job_id"]
        deadline = time.monotonic() + timeout_s
        while (status := await client.call("GET", f"/jobs/{job_id}"))["status"] not in TERMINAL_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout_s}s")
            await asyncio.sleep(0.2)
        if status["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {status['status']}: {status.get('error')}")
        job_s = datetime.fromisoformat(status["finished_at"]).timestamp() - submitted
        output = (await client.call("GET", f"/jobs/{job_id}/result"))["output"]
        assert len(output) == rows_count
    return {
        "rows": rows_count,
        "job_rows_per_s": round(rows_count / job_s),
        "batch_predict_rows_per_s": round(rows_count / direct_s),
        "ratio": round(direct_s / job_s, 2),
    }


def _free_port_run(length: int) -> int:
    """A port such that it and the ``length - 1`` after it are free (the launcher's layout)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + length):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no run of {length} free ports")


CpuSeconds = Callable[[], dict[str, float]]


@contextlib.contextmanager
def local_stack(pair: str, workers: int, log_dir: Path) -> Iterator[tuple[str, Callable[[bytes], str], CpuSeconds]]:
    """Gateway + workers + sidecars via the launcher, one deployment; yields the gateway URL, an uploader and
    a function answering the CPU seconds its processes used so far, by role."""
    run = uuid.uuid4().hex[:8]
    jobs_dir = log_dir / f"jobs-{pair}"
    env = {"JOBS_DIR": str(jobs_dir), "ACCESS_LOG": "false"}
    moto = None
    database = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
    schema = f"bench_jobs_{run}"

    def upload(data: bytes) -> str:
        if moto is not None:
            httpx.put(f"{env['S3_ENDPOINT_URL']}/{env['S3_BUCKET']}/inputs/{run}.json", content=data).raise_for_status()
            return f"s3://{env['S3_BUCKET']}/inputs/{run}.json"
        path = (jobs_dir / "store" / "inputs" / f"{run}.json").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"file://{path}"

    if pair != "embedded":
        asyncio.run(_sql(database, f"CREATE SCHEMA {schema}"))
        env.update({
            "AMQP_URL": os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/",
            "JOB_QUEUE": f"bench-jobs-{run}",
            "DATABASE_URL": f"{database}{'&' if '?' in database else '?'}search_path={schema}",
        })
    if pair == "rabbitmq-s3":  # moto's S3 server in a process of its own, not competing with this client
        host, port = "127.0.0.1", _free_port_run(1)
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: httpx.put(f"http://{host}:{port}/bench-{run}").status_code == 200, moto, 60)
        env.update({
            "S3_ENDPOINT_URL": f"http://{host}:{port}", "S3_BUCKET": f"bench-{run}",
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        })
    port = _free_port_run(workers + 1)
    url = f"http://127.0.0.1:{port}"
    served: str | None = None  # the model's name: its queues are the ones to delete
    with open(log_dir / f"stack-{pair}.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "launcher", "--workers", str(workers), "--port", str(port)],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
    try:
        _wait(lambda: httpx.get(f"{url}/gateway/health", timeout=1).json().get("alive_backends") == workers,
              process, 300)
        served = httpx.get(f"{url}/metadata", timeout=5).raise_for_status().json()["name"]
        yield url, upload, lambda: stack_cpu_seconds(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if pair != "embedded":
            asyncio.run(_delete_queues(env, [served] if served is not None else []))
            asyncio.run(_sql(database, f"DROP SCHEMA {schema} CASCADE"))
        if moto is not None:
            moto.terminate()
            moto.wait()


def stack_cpu_seconds(launcher: int) -> dict[str, float]:
    """User + system CPU seconds of the launcher's children (all their threads), summed by role: ``gateway``,
    ``sidecar``, ``worker`` (Linux /proc). Other work on the machine moves it less than wall time."""
    totals: dict[str, float] = {}
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # exited meanwhile
            continue
        role = argv[2].decode().removeprefix("jobs.") if len(argv) > 2 and argv[1] == b"-m" else "other"
        totals[role] = totals.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return totals


async def _sql(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _wait(ready: Callable[[], bool], process: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``ready`` while ``process`` starts (start-up only)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if ready():
                return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"{process.args} not ready after {timeout_s}s")


async def _delete_queues(env: dict[str, str], models: list[str]) -> None:
    from jobs.broker_amqp import AmqpBroker

    broker = AmqpBroker(env["AMQP_URL"], env["JOB_QUEUE"], 3)
    await broker.start()
    await broker.delete_queues(*models)
    await broker.close()


def measure_celery(reference: tuple[list[Any], list[Any]], results_in: str, workers: int, jobs: int,
                   group_jobs: int, group_size: int, concurrency: int, submitters: int, warmup_jobs: int,
                   log_dir: Path) -> dict[str, Any]:
    """Celery 5 under the same rules (bench/celery_bench.py), results in ``results_in`` (redis or postgresql), its
    answers checked against ``reference``: one task per call (``concurrency`` submitters at most), then groups
    (``submitters`` threads); the worker's CPU ms per job beside each."""
    from bench.celery_bench import celery_worker, run_celery_jobs

    rows, expected = reference
    results: dict[str, Any] = {}
    with celery_worker(workers, results_in, log_dir) as (app, cpu):
        if warmup_jobs:
            run_celery_jobs(app, rows, expected, warmup_jobs, concurrency)
        for name, count, size, threads in (("one_per_call", jobs, 0, concurrency),
                                           ("group", group_jobs, group_size, submitters)):
            before = cpu()
            results[name] = run_celery_jobs(app, rows, expected, count, threads, size)
            results[name]["cpu_ms_per_job"] = {"worker": round((cpu() - before) * 1000 / count, 2)}
            if size:
                results[name]["group_size"] = size
    return results


def comparison_table(results: dict[str, Any]) -> str:
    """Ours and Celery in one Markdown table, each rate also as a multiple of Celery's best."""
    ours: list[tuple[str, dict[str, Any]]] = []
    celery: list[tuple[str, dict[str, Any]]] = []
    for name, result in results.items():
        if name.startswith("celery-"):
            where = name.removeprefix("celery-")
            celery += [(f"Celery ({where} results), one task per apply_async", result["one_per_call"]),
                       (f"Celery ({where} results), group of {result['group']['group_size']}", result["group"])]
        else:
            ours.append((f"ours ({name}), one job per POST /jobs", result))
            if "bulk" in result:
                ours.append((f"ours ({name}), POST /jobs/batch of {result['bulk']['batch_size']}", result["bulk"]))
    lines = ours + celery
    best = max(result["jobs_per_s"] for _, result in celery)
    table = ["| path | jobs | jobs/s | p50 | p99 | / Celery's best |", "|---|--:|--:|--:|--:|--:|"]
    table += [f"| {label} | {r['jobs']:,} | {r['jobs_per_s']:,.0f} | {r['p50_ms'] / 1000:.2f} s | "
              f"{r['p99_ms'] / 1000:.2f} s | {r['jobs_per_s'] / best:.2f} |" for label, r in lines]
    return "\n".join(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs_bench", description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--gateway", help="URL of a running gateway")
    target.add_argument("--stack", choices=[*PAIRS, "all"],
                        help="start a local stack per deployment (with --against and no target: rabbitmq-postgres)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs submitted (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=200, help="HTTP requests in flight")
    parser.add_argument("--workers", type=int, default=2, help="workers (and sidecars) of --stack")
    parser.add_argument("--poll", action="store_true",
                        help="poll each job's status instead of GET /jobs/<id>/result?wait= (older gateways)")
    parser.add_argument("--warmup-jobs", type=int, default=200,
                        help="jobs run first and not measured: a fresh stack's first burst also opens its database "
                        "connections and prepares their statements (default: %(default)s)")
    parser.add_argument("--large-rows", type=int, default=100_000,
                        help="rows of the one large job measured per --stack deployment (0: none)")
    parser.add_argument("--bulk-jobs", type=int,
                        help="one-row jobs also submitted with POST /jobs/batch, and run as Celery groups "
                        "(default: 10,000 with --against, else 0: none)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="jobs per POST /jobs/batch and per Celery group (default: %(default)s)")
    parser.add_argument("--bulk-submitters", type=int, default=4,
                        help="POST /jobs/batch requests in flight, and threads applying Celery groups: 10,000 jobs "
                        "published at once outlast the gateway's JOB_PUBLISH_TIMEOUT_S (default: %(default)s)")
    parser.add_argument("--against", choices=["celery"],
                        help="also run Celery 5 on the same broker, database and model, with --workers processes "
                        "(needs the celery extra: pip install '.[celery]')")
    parser.add_argument("--celery-results", nargs="+", choices=["redis", "postgresql"], default=["redis"],
                        help="Celery's result stores, one Celery run each: redis (REDIS_URL, Celery's fastest) "
                        "and/or postgresql (DATABASE_URL: as durable as our records) (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.against and importlib.util.find_spec("celery") is None:
        parser.error("--against celery needs Celery: pip install '.[celery]'")
    if not (args.gateway or args.stack):
        if not args.against:
            parser.error("one of the arguments --gateway --stack is required")
        args.stack = "rabbitmq-postgres"
    bulk_jobs = args.bulk_jobs if args.bulk_jobs is not None else 10_000 if args.against else 0
    references: list[tuple[list[Any], list[Any]]] = []

    def measured(url: str, cpu: CpuSeconds | None = None) -> dict[str, Any]:
        """The small jobs' figures after the warm-up, then the bulk path's; with ``cpu``, the CPU ms per job of
        each role."""
        if args.warmup_jobs:
            uvloop.run(run_jobs_bench(url, args.warmup_jobs, args.concurrency, wait=not args.poll))

        def with_cpu(run: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
            before = cpu() if cpu else {}
            figures = uvloop.run(run())
            if cpu:
                figures["cpu_ms_per_job"] = {role: round((seconds - before.get(role, 0.0)) * 1000 / figures["jobs"], 2)
                                             for role, seconds in sorted(cpu().items())}
            return figures

        result = with_cpu(lambda: run_jobs_bench(url, args.jobs, args.concurrency, wait=not args.poll))
        if bulk_jobs:
            result["bulk"] = with_cpu(lambda: run_bulk_jobs_bench(url, bulk_jobs, args.batch_size,
                                                                  args.bulk_submitters, args.concurrency))
        if args.against and not references:
            references.append(uvloop.run(_reference(url)))
        return result

    results = {}
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        if args.gateway:
            results["gateway"] = measured(args.gateway)
        else:
            pairs = PAIRS if args.stack == "all" else [args.stack]
            for pair in pairs:
                with local_stack(pair, args.workers, Path(tmp)) as (url, upload, cpu):
                    results[pair] = measured(url, cpu)
                    if args.large_rows:
                        results[pair]["large_job"] = uvloop.run(
                            run_large_job_bench(url, upload, args.large_rows, args.workers))
                print(f"{pair}: {json.dumps(results[pair])}", flush=True)
        # After the stacks are stopped: Celery has the machine to itself, as each stack had.
        for results_in in args.celery_results if args.against else []:
            name = f"celery-{results_in}"
            results[name] = measure_celery(references[0], results_in, args.workers, args.jobs, bulk_jobs or args.jobs,
                                           args.batch_size, args.concurrency, args.bulk_submitters,
                                           args.warmup_jobs, Path(tmp))
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(json.dumps(results, indent=2))
    if args.against:
        print(comparison_table(results))


async def _reference(url: str) -> tuple[list[Any], list[Any]]:
    async with _Gateway(url, 1, 1) as client:
        return await reference_answers(client)


if __name__ == "__main__":
    main()
