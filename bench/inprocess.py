"""The in-process limit: rows/s of the jitted ``predict_batch`` called in a loop, no HTTP.

``python -m bench.inprocess --model worker.examples.mlp:HeavyMLP --batch 64``
prints one JSON object. The benchmark runs it in a fresh process so XLA gets
the same thread settings as a worker (``XLA_CPU_THREADS``, as in ``python -m worker``).
Two numbers: ``jit`` calls the compiled function on a device array (the
model's ceiling), ``runtime`` goes through ``ModelRuntime.infer`` (padding,
host copies: what the batcher pays per batch). Each also gives the process's CPU per row (all its threads:
XLA's own included), the model's share of a worker's CPU per served row.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _rates(call, batch: int, duration_s: float) -> dict:
    """Wall and CPU time of ``call`` in a loop for ``duration_s``."""
    call()  # compile, warm caches
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < duration_s:
        call()
        calls += 1
    cpu_s = time.process_time() - cpu_started
    return {"rows_per_s": round(calls * batch / elapsed, 1), "ms_per_call": round(elapsed / calls * 1000, 4),
            "cpu_ms_per_row": round(cpu_s / (calls * batch) * 1000, 4)}


def measure(model_path: str, batch: int, duration_s: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from worker.contract import load_model_class
    from worker.metrics import WorkerMetrics
    from worker.runtime import ModelRuntime, configure_jax
    from worker.settings import ARTIFACTS_DIR, WorkerSettings

    configure_jax("")  # the worker's JAX settings, without its compilation cache
    model = load_model_class(model_path)()
    params = jax.device_put(model.load(ARTIFACTS_DIR))
    rows = np.random.default_rng(0).uniform(0, 8, (batch, *model.input_shape)).astype(model.input_dtype)
    x = jnp.asarray(rows)
    jitted = jax.jit(model.predict_batch)
    result: dict = {"model": model_path, "batch": batch, "xla_cpu_threads": os.environ.get("XLA_CPU_THREADS")}
    result["jit"] = _rates(lambda: jax.block_until_ready(jitted(params, x)), batch, duration_s)

    buckets = WorkerSettings(max_batch_size=batch).bucket_sizes
    runtime = ModelRuntime(model, ARTIFACTS_DIR, buckets, WorkerMetrics(batch))
    runtime.load_and_warm_up()
    result["runtime"] = _rates(lambda: runtime.infer(rows), batch, duration_s)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--model", default="worker.examples.mlp:HeavyMLP")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()
    threads = os.environ.get("XLA_CPU_THREADS")
    if threads:  # the same flags as worker/__main__.py, before JAX is imported
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
        ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps(measure(args.model, args.batch, args.duration)))


if __name__ == "__main__":
    main()
