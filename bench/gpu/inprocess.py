"""The in-process limit at several batch sizes, on whatever device JAX picks, in one fresh process.

``python -m bench.gpu.inprocess --model M --batches 1 64 256 1024`` prints one
JSON object: the device JAX ran on, and per batch what ``bench.inprocess``
measures (the jitted call on a device array; and ``ModelRuntime.infer``, which
adds padding and the host copies each way). One process for every batch size:
JAX starts once, and the GPU's memory is claimed once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def measure_all(model: str, batches: list[int], duration_s: float) -> dict:
    import jax

    from bench.inprocess import measure

    device = jax.devices()[0]
    return {"model": model, "platform": device.platform, "device": device.device_kind,
            "batches": [measure(model, batch, duration_s) for batch in batches]}


def run(model: str, batches: list[int], duration_s: float, env: dict[str, str], timeout_s: float) -> dict:
    """``measure_all`` in a child process with ``env`` (the workers' device settings)."""
    argv = [sys.executable, "-m", "bench.gpu.inprocess", "--model", model, "--duration", str(duration_s),
            "--batches", *map(str, batches)]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"bench.gpu.inprocess failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.inprocess", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batches", nargs="+", type=int, required=True)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args()
    print(json.dumps(measure_all(args.model, args.batches, args.duration)))


if __name__ == "__main__":
    main()
