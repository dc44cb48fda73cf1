"""The short chaos run: kill -9, SIGTERM, a hung worker and a gateway restart under load, no failed request.

``python -m bench.chaos --quick`` on its own stack; ``make chaos`` runs the full set.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import JAX_CACHE_DIR, REPO

pytestmark = pytest.mark.integration


def test_quick_chaos_loses_no_request(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--no-doc", "--clients", "50",
         "--log-dir", str(tmp_path), "--jax-cache-dir", str(JAX_CACHE_DIR)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("| scenario |", 1)[1]
    for scenario in ("worker kill -9", "worker SIGTERM", "hung worker", "gateway restart"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {scenario}"))
        requests, failed, _, wrong = (cell.strip() for cell in row.split("|")[2:6])
        assert int(requests) > 0 and failed == "0" and wrong == "0", row
