"""Where JAX lives in the worker: jit, padding to buckets, warm-up, device, contract checks.

At start-up the runtime loads the parameters, traces ``predict_batch`` once
(``jax.eval_shape``: no compilation) to derive the outputs' shapes and to check
the contract (jittable, a dict of arrays, every output keeping the batch axis),
and compiles every bucket (the app then runs the example row end to end). Any
failure is a :class:`ContractError` naming the model and the method.

A new version of the parameters goes through the same steps
(:meth:`ModelRuntime.load_version`), on a thread of its own while the batcher
serves: parameters of the same shapes and dtypes hit the buckets already
compiled (no compilation), others compile their buckets there, off the serving
path. The jitted function takes the parameters as an argument, so any number
of versions share it.

Every model call of the worker goes through :meth:`ModelRuntime.infer`, which
the batcher runs on its one thread. Shapes are padded up to a fixed set of
bucket sizes so XLA compiles each once, during warm-up, and never again while
serving.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from worker.contract import ContractError, Model, TensorSpec
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


@dataclass(frozen=True)
class LoadedParams:
    """A version's parameters on the device, checked and compiled for every bucket."""

    params: Any
    outputs: tuple[TensorSpec, ...]
    #: XLA compilations the load caused (0 when the shapes and dtypes are those of a loaded version).
    compilations: int


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
        # Traces per thread: a version loaded beside the served one counts only its own compilations.
        self._traces = threading.local()

    def _traced_predict(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        # Python runs this body only when jit traces a new shape: count compilations here.
        self._metrics.compilations.inc()
        self._traces.count = getattr(self._traces, "count", 0) + 1
        return self.model.predict_batch(params, x)

    def load_and_warm_up(self) -> tuple[TensorSpec, ...]:
        """Load the start artifacts, check the contract, compile every bucket; return the outputs' specs."""
        loaded = self.load_version(self._artifacts)
        self._params = loaded.params
        log.info("model %s compiled for batch sizes %s on %s", self.model.name, self.bucket_sizes, self.device)
        return loaded.outputs

    def load_version(self, folder: Path) -> LoadedParams:
        """Load parameters from ``folder``, check the contract with them and compile what their shapes need.

        Runs on the caller's thread (never the batcher's); raises :class:`ContractError` naming the method.
        """
        model = self.model
        traces_before = getattr(self._traces, "count", 0)
        try:
            params = jax.device_put(model.load(folder))
        except Exception as exc:
            raise ContractError(model, "load", f"failed on {folder}: {type(exc).__name__}: {exc}") from exc
        outputs = self.trace_outputs(params)
        row_shape = model.input_shape or ()
        for size in self.bucket_sizes:
            zeros = jnp.zeros((size, *row_shape), dtype=model.input_dtype)
            try:
                jax.block_until_ready(self._jitted(params, zeros))
            except Exception as exc:
                raise ContractError(model, "predict_batch", f"failed to compile for a batch of {size}: {exc}") from exc
        compilations = getattr(self._traces, "count", 0) - traces_before
        return LoadedParams(params, outputs, compilations)

    def infer_with(self, params: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """The model call with ``params`` (a loaded version's): it holds them while it is referenced."""
        return functools.partial(self.infer, params=params)

    def release_start_params(self) -> None:
        """Forget the start artifacts' parameters (another version serves): their device memory is freed."""
        self._params = None

    def trace_outputs(self, params: Any, batch: int = 3) -> tuple[TensorSpec, ...]:
        """Trace ``predict_batch`` abstractly; check its outputs and derive their per-row specs."""
        model = self.model
        x = jax.ShapeDtypeStruct((batch, *(model.input_shape or ())), jnp.dtype(model.input_dtype))
        try:
            traced = jax.eval_shape(model.predict_batch, params, x)
        except Exception as exc:
            raise ContractError(model, "predict_batch", f"is not jittable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(traced, dict) or not traced or not all(isinstance(k, str) for k in traced):
            raise ContractError(model, "predict_batch", "must return a non-empty dict of arrays keyed by name")
        specs = []
        for name, value in traced.items():
            shape = getattr(value, "shape", None)
            if shape is None:
                raise ContractError(model, "predict_batch", f"output {name!r} is not an array")
            if shape[:1] != (batch,):
                raise ContractError(model, "predict_batch", f"output {name!r} has shape {tuple(shape)} for a batch "
                                    f"of {batch}: every output must keep the leading batch axis")
            specs.append(TensorSpec(name, tuple(shape[1:]), str(value.dtype), model.outputs.get(name, "")))
        unknown = set(model.outputs) - set(traced)
        if unknown:
            raise ContractError(model, "outputs", f"describes {sorted(unknown)}, which predict_batch does not return")
        labels = model.labels
        if labels is not None and specs[0].shape != (len(labels),):
            raise ContractError(model, "labels", f"{len(labels)} labels, but the first output {specs[0].name!r} "
                                f"has per-row shape {specs[0].shape}")
        return tuple(specs)

    def bucket_for(self, n: int) -> int:
        for size in self.bucket_sizes:
            if size >= n:
                return size
        raise ValueError(f"{n} rows exceed the largest bucket {self.bucket_sizes[-1]}")

    def infer(self, rows: np.ndarray, params: Any = None) -> dict[str, np.ndarray]:
        """Run one batch with ``params`` (default: the start artifacts'): pad to its bucket, call, unpad."""
        n = len(rows)
        bucket = self.bucket_for(n)
        padded = np.zeros((bucket, *rows.shape[1:]), dtype=self.model.input_dtype)
        padded[:n] = rows
        self._metrics.padding_fraction.observe((bucket - n) / bucket)
        outputs = jax.device_get(self._jitted(self._params if params is None else params, padded))
        return {name: np.asarray(value)[:n] for name, value in outputs.items()}

