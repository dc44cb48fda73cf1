"""Run ``bench.inprocess`` in a fresh interpreter, with a worker's XLA settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_inprocess(model: str, batch: int, duration_s: float, env: dict[str, str] | None = None) -> dict:
    argv = [sys.executable, "-m", "bench.inprocess", "--model", model, "--batch", str(batch),
            "--duration", str(duration_s)]
    done = subprocess.run(argv, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}, cwd=REPO,
                          capture_output=True, text=True, timeout=120 + 4 * duration_s)
    if done.returncode != 0:
        raise RuntimeError(f"bench.inprocess failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
