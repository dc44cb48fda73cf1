"""The short chaos run: kill -9, SIGTERM, a hung worker, a gateway restart and a worker killed each time it is
back under load, no failed request; a broker and a store restart under job load, no lost or duplicated job;
a database outage on a PostgreSQL of the test's own, no failed or lost job.

``python -m bench.chaos --quick`` on its own stack; ``make chaos`` runs the full set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bench.chaos import BROKER_ROW, STORE_ROW
from bench.outage_servers import rabbitmq_bin, s3rver_bin
from tests.support import JAX_CACHE_DIR, REPO, require_postgres_server

pytestmark = [pytest.mark.integration, pytest.mark.served_model]


def test_quick_chaos_loses_no_request(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--no-doc", "--clients", "50",
         "--log-dir", str(tmp_path), "--jax-cache-dir", str(JAX_CACHE_DIR)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("| scenario |", 1)[1]
    for scenario in ("worker kill -9", "worker SIGTERM", "hung worker", "gateway restart", "worker crash loop"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {scenario}"))
        requests, failed, _, wrong = (cell.strip() for cell in row.split("|")[2:6])
        assert int(requests) > 0 and failed == "0" and wrong == "0", row
    crash_loop = next(line for line in table.splitlines() if line.startswith("| worker crash loop"))
    assert "stack running at the end" in crash_loop, crash_loop


def test_quick_broker_and_store_outages_lose_no_job(tmp_path) -> None:
    """Own RabbitMQ node (stop_app / start_app) and s3rver (stopped, started) under job load: every job done once."""
    scenarios = {"broker": BROKER_ROW, "store": STORE_ROW}
    if rabbitmq_bin() is None:
        del scenarios["broker"]  # the shared broker is never stopped: without rabbitmq-server there is no own node
    if s3rver_bin() is None and os.environ.get("REQUIRE_BROKER") != "1":
        del scenarios["store"]
    if not scenarios:
        pytest.skip("neither rabbitmq-server nor s3rver is installed (scripts/install-system-deps.sh installs s3rver)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--no-doc", "--scenarios", *scenarios,
         "--log-dir", str(tmp_path), "--jax-cache-dir", str(JAX_CACHE_DIR)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("| scenario |", 1)[1]
    for scenario in scenarios.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {scenario}"))
        jobs, failed, lost, wrong = (cell.strip() for cell in row.split("|")[2:6])
        assert int(jobs) > 0 and failed == lost == wrong == "0", row
        assert "; 0 duplicated;" in row and "(0 without Retry-After or the error body)" in row, row
        assert int(re.search(r"(\d+) POST /jobs and", row)[1]) > 0, f"no submission met the outage: {row}"


def test_quick_database_outage_fails_no_job(tmp_path) -> None:
    """A PostgreSQL of the test's own stopped for 10 s under a trickle of jobs (embedded broker): every job done,
    right, /predict never failed, the stack still running."""
    require_postgres_server()
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--no-doc", "--scenarios", "database",
         "--db-brokers", "embedded", "--log-dir", str(tmp_path), "--jax-cache-dir", str(JAX_CACHE_DIR)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("| scenario |", 1)[1]
    row = next(line for line in table.splitlines() if line.startswith("| database down 10 s, no backlog"))
    jobs, failed, lost, wrong = (cell.strip() for cell in row.split("|")[2:6])
    assert int(jobs) > 0 and failed == lost == wrong == "0", row
    assert re.search(r"/predict \d+ requests, 0 failed, 0 wrong", row), row
    assert "stack running at the end" in row, row
    assert int(re.search(r"(\d+) POST /jobs and", row)[1]) > 0, f"no submission met the outage: {row}"
