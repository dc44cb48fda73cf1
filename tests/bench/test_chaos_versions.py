"""The ``promote`` chaos scenario: a train job promoted, a worker killed, a rollback and a canary under load.

The short run is ``python -m bench.chaos --quick --scenarios promote`` on its own stack with fewer clients and
canary answers and a wider canary tolerance; ``make chaos`` runs it in full.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.chaos_versions import PROMOTE_ROWS
from tests.support import JAX_CACHE_DIR, REPO


@pytest.mark.integration
@pytest.mark.served_model
def test_quick_promote_fails_no_request_and_compiles_nothing(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--no-doc", "--scenarios", "promote",
         "--promote-clients", "16", "--canary-answers", "4000", "--canary-tolerance", "5",
         "--switch-target-s", "5", "--log-dir", str(tmp_path), "--jax-cache-dir", str(JAX_CACHE_DIR)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("| scenario |", 1)[1]
    for scenario in PROMOTE_ROWS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {scenario}"))
        requests, failed, _, wrong = (cell.strip() for cell in row.split("|")[2:6])
        assert int(requests) > 0 and failed == "0" and wrong == "0", row
        assert "compilations" not in row or "compilations 0, 0 per worker" in row, row
    assert "worker 0 back serving version" in table and " NEVER" not in table
