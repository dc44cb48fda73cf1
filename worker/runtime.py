"""Where JAX lives in the worker: jit, padding to buckets, warm-up, device.

Every model call of the worker goes through :meth:`ModelRuntime.infer`, which
the batcher runs on its one thread. Shapes are padded up to a fixed set of
bucket sizes so XLA compiles each once, during warm-up, and never again while
serving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from worker.contract import Model
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def configure_jax(cache_dir: str) -> None:
    """Run CPU computations on the calling thread; turn on the persistent compilation cache."""
    # The batcher already calls the model on a thread of its own and waits for the answer:
    # CPU async dispatch only adds a second thread hop per batch (see docs/benchmarks.md).
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if not cache_dir:
        return
    folder = Path(cache_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # On CPU compilations are fast, and the default minimum (1 s) would cache nothing.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class ModelRuntime:
    """Holds a model, its parameters on the device, and its compiled buckets."""

    def __init__(
        self, model: Model, artifacts: Path, bucket_sizes: tuple[int, ...], metrics: WorkerMetrics
    ) -> None:
        self.model = model
        self._artifacts = artifacts
        self.bucket_sizes = bucket_sizes
        self._metrics = metrics
        self._params: Any = None
        self._jitted = jax.jit(self._traced_predict)
        self.device = str(jax.devices()[0])

    def _traced_predict(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        # Python runs this body only when jit traces a new shape: count compilations here.
        self._metrics.compilations.inc()
        return self.model.predict_batch(params, x)

    def load_and_warm_up(self) -> None:
        """Load parameters and compile every bucket; the worker is ready after this."""
        self._params = jax.device_put(self.model.load(self._artifacts))
        row_shape = self.model.input_shape
        for size in self.bucket_sizes:
            zeros = jnp.zeros((size, *row_shape), dtype=self.model.input_dtype)
            jax.block_until_ready(self._jitted(self._params, zeros))
        log.info("model %s compiled for batch sizes %s on %s", self.model.name, self.bucket_sizes, self.device)

    def bucket_for(self, n: int) -> int:
        for size in self.bucket_sizes:
            if size >= n:
                return size
        raise ValueError(f"{n} rows exceed the largest bucket {self.bucket_sizes[-1]}")

    def infer(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch: pad to its bucket, call the compiled function, unpad."""
        n = len(rows)
        bucket = self.bucket_for(n)
        padded = np.zeros((bucket, *rows.shape[1:]), dtype=self.model.input_dtype)
        padded[:n] = rows
        self._metrics.padding_fraction.observe((bucket - n) / bucket)
        outputs = jax.device_get(self._jitted(self._params, padded))
        return {name: np.asarray(value)[:n] for name, value in outputs.items()}


def visible_gpu() -> str | None:
    """The GPU this process was pinned to by its launcher or compose file."""
    return os.environ.get("CUDA_VISIBLE_DEVICES") or None
