"""Fixtures of the job tests: both adapter pairs, a gateway and sidecars.

``jobs_settings`` is parametrized over the deployments: the embedded broker
with a local folder and SQLite records; the same with PostgreSQL records; and
RabbitMQ with an S3 server (moto's, on loopback) and PostgreSQL. The RabbitMQ
ones are skipped when no broker answers, unless REQUIRE_BROKER=1; the
PostgreSQL ones when no database answers, unless REQUIRE_DATABASE=1. Each
test gets its own PostgreSQL schema, dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from bench.outage_servers import PgServer, RabbitNode, S3Server, rabbitmq_bin, s3rver_bin
from gateway.app import create_app
from gateway.settings import GatewaySettings
from jobs.broker import Broker, create_broker
from jobs.broker_amqp import AmqpBroker
from jobs.database import Database, create_database
from jobs.metrics import JobsMetrics
from jobs.schema import TERMINAL_STATES
from jobs.settings import JobsSettings
from jobs.sidecar import Sidecar
from jobs.store import ArtifactStore
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker
from tests.support import free_port, require_postgres_server, start_process

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
DATABASE_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def fake_worker() -> Iterator[FakeWorker]:
    worker = FakeWorker().start()
    yield worker
    worker.stop()


@pytest.fixture(autouse=True)
def _fresh_fake_worker(request: pytest.FixtureRequest) -> None:
    if "fake_worker" in request.fixturenames:
        worker = request.getfixturevalue("fake_worker")
        worker.delay_s, worker.rows_seen, worker.calls = 0.0, 0, 0
        worker.model_name, worker.model_version = FAKE_MODEL, "1"


# Servers of a test's own, for outages: never the machine's shared RabbitMQ or PostgreSQL.
@pytest.fixture
def rabbit_node(tmp_path: Path) -> Iterator[RabbitNode]:
    if rabbitmq_bin() is None:
        pytest.skip("rabbitmq-server is not installed: the broker outage needs a RabbitMQ node of its own")
    node = RabbitNode(tmp_path / "rabbitmq")
    try:
        node.start()
    except RuntimeError as exc:
        if os.environ.get("REQUIRE_BROKER") == "1":
            raise
        pytest.skip(f"a RabbitMQ node of our own did not start ({exc}); REQUIRE_BROKER=1 to fail")
    yield node
    node.close()


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    if s3rver_bin() is None:
        if os.environ.get("REQUIRE_BROKER") == "1":
            pytest.fail("REQUIRE_BROKER=1 but s3rver is not installed (scripts/install-system-deps.sh installs it)")
        pytest.skip("s3rver is not installed (scripts/install-system-deps.sh installs it); REQUIRE_BROKER=1 to fail")
    with S3Server(tmp_path / "s3") as server:
        yield server


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[PgServer]:
    require_postgres_server()
    with PgServer(tmp_path / "postgres") as server:
        yield server


@pytest.fixture(scope="session")
def amqp_url() -> str:
    async def probe() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        await connection.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 5))
    except Exception as exc:
        if os.environ.get("REQUIRE_BROKER") == "1":
            pytest.fail(f"REQUIRE_BROKER=1 but no RabbitMQ answers at {AMQP_URL}: {exc!r}")
        pytest.skip(f"no RabbitMQ answers at {AMQP_URL} ({exc!r}); set AMQP_URL, or REQUIRE_BROKER=1 to fail")
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_server() -> str:
    async def probe() -> None:
        connection = await asyncpg.connect(DATABASE_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        if os.environ.get("REQUIRE_DATABASE") == "1":
            pytest.fail(f"REQUIRE_DATABASE=1 but no PostgreSQL answers at {DATABASE_URL}: {exc!r}")
        pytest.skip(f"no PostgreSQL answers at {DATABASE_URL} ({exc!r}); set DATABASE_URL, or REQUIRE_DATABASE=1 "
                    "to fail")
    return DATABASE_URL


@pytest.fixture
def database_url(postgres_server: str) -> Iterator[str]:
    """A URL on a fresh schema of the test database, dropped after the test."""
    schema = f"test_jobs_{uuid.uuid4().hex[:12]}"

    async def sql(statement: str) -> None:
        connection = await asyncpg.connect(postgres_server)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(sql(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in postgres_server else "?"
    yield f"{postgres_server}{separator}search_path={schema}"
    asyncio.run(sql(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def embedded_settings(tmp_path: Path, worker_url: str, **changes: Any) -> JobsSettings:
    values: dict[str, Any] = {
        "amqp_url": None, "s3_bucket": None, "s3_endpoint_url": None, "jobs_dir": tmp_path / "jobs",
        "worker_url": worker_url, "job_chunk_rows": 2, "job_retry_delay_s": 0.0, "job_max_deliveries": 3,
        "embedded_visibility_timeout_s": 1.5, "embedded_poll_interval_s": 0.02, "sidecar_shutdown_grace_s": 5.0,
        "job_task_modules": ["tests.jobs.failing_tasks"], "worker_ready_timeout_s": 30.0,
    }
    return JobsSettings(**{**values, **changes})


@pytest.fixture(params=["embedded", "postgres", "rabbitmq"])
def jobs_settings(request: pytest.FixtureRequest, tmp_path: Path, fake_worker: FakeWorker) -> Iterator[JobsSettings]:
    if request.param == "embedded":
        yield embedded_settings(tmp_path, fake_worker.url)
        return
    database_url = request.getfixturevalue("database_url")
    if request.param == "postgres":
        yield embedded_settings(tmp_path, fake_worker.url, database_url=database_url)
        return
    amqp_url, s3 = request.getfixturevalue("amqp_url"), request.getfixturevalue("s3_endpoint")
    run = uuid.uuid4().hex[:12]
    httpx.put(f"{s3}/jobs-{run}").raise_for_status()  # moto creates the bucket
    settings = embedded_settings(
        tmp_path, fake_worker.url, amqp_url=amqp_url, job_queue=f"test-jobs-{run}", s3_endpoint_url=s3,
        s3_bucket=f"jobs-{run}", aws_access_key_id="test", aws_secret_access_key="test", database_url=database_url,
    )
    yield settings
    asyncio.run(_delete_queues(settings))


async def _delete_queues(settings: JobsSettings) -> None:
    broker = create_broker(settings)
    assert isinstance(broker, AmqpBroker)
    await broker.start()
    await broker.delete_queues(FAKE_MODEL)
    await broker.close()


@contextlib.asynccontextmanager
async def gateway(settings: JobsSettings, **gateway_changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A real gateway (uvicorn, in this process) on a free port, with the jobs' settings and ``gateway_changes``
    (its workers: WORKER_URL's unless they say)."""
    port = free_port()
    worker = settings.worker_url.removeprefix("http://")
    app = create_app(GatewaySettings(**{"workers": [worker], "access_log": False, **gateway_changes}), settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # start-up only
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def sidecar(settings: JobsSettings, *, patient_store: bool = False,
                  database: Database | None = None) -> AsyncIterator[Sidecar]:
    """A sidecar in this process; it stops as on SIGTERM when the block ends. ``patient_store``: its store
    retries for SIDECAR_STORE_RETRY_S, as ``python -m jobs.sidecar`` builds it; ``database``: its own (the
    settings' by default)."""
    store = ArtifactStore.from_settings(settings, retry_s=settings.sidecar_store_retry_s if patient_store else None)
    runner = Sidecar(settings, store, create_broker(settings), database or create_database(settings),
                     JobsMetrics(CollectorRegistry()))
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await running


def settings_env(settings: JobsSettings) -> dict[str, str]:
    """The environment that gives a sidecar process these settings."""
    env = {}
    for name in JobsSettings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    return env


def sidecar_process(settings: JobsSettings, log: Path) -> subprocess.Popen:
    return start_process([sys.executable, "-m", "jobs.sidecar"], settings_env(settings), log)


@contextlib.asynccontextmanager
async def broker_of(settings: JobsSettings) -> AsyncIterator[Broker]:
    broker = create_broker(settings)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


async def wait_for_job(client: httpx.AsyncClient, job_id: str, done: Callable[[dict[str, Any]], bool],
                       timeout_s: float = 30) -> dict[str, Any]:
    """Poll GET /jobs/{id} until ``done(status)``; a client of the API can only poll."""
    async def poll() -> dict[str, Any]:
        while True:
            status = (await client.get(f"/jobs/{job_id}")).json()
            if done(status):
                return status
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout_s)


def finished(status: dict[str, Any]) -> bool:
    return status["status"] in TERMINAL_STATES


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


def dependency_up(runner: Sidecar, name: str) -> float | None:
    """The sidecar's own gauge, as its /metrics shows it."""
    return runner.metrics.registry.get_sample_value("jobs_sidecar_dependency_up", {"dependency": name})


@pytest.fixture
async def forbidding_s3() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An S3 endpoint that answers every request 403, and the request lines it saw."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
