"""``python -m worker``: serve the configured model on one device."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import uvicorn

from common.draining import CloseWhileDraining, Drain, DrainingServer
from common.exit_codes import MODEL_BROKEN, MODEL_BROKEN_LINE
from worker.settings import WorkerSettings


def main() -> None:
    settings = WorkerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s worker-{settings.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    if settings.xla_cpu_threads == 1:
        # Must be in the environment before XLA starts, so before JAX is imported.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()

    from worker.app import create_app
    from worker.contract import ContractError, load_model_class
    from worker.metrics import WorkerMetrics
    from worker.runtime import ModelRuntime, configure_jax

    configure_jax(settings.jax_cache_dir)
    metrics = WorkerMetrics(settings.max_batch_size)
    log = logging.getLogger("worker")
    try:
        model = load_model_class(settings.model)()
    except Exception as exc:
        log.exception("cannot load the model class MODEL=%s", settings.model)
        log.error("%sMODEL=%s: %s: %s", MODEL_BROKEN_LINE, settings.model, type(exc).__name__, exc)
        sys.exit(MODEL_BROKEN)
    runtime = ModelRuntime(model, settings.model_artifacts, settings.bucket_sizes, metrics)
    server: uvicorn.Server | None = None
    failure: Exception | None = None

    def exit_after_failure(error: Exception) -> None:
        # /health keeps saying why for a moment, then the process exits non-zero.
        nonlocal failure
        failure = error
        assert server is not None
        asyncio.get_running_loop().call_later(settings.failed_exit_delay_s, setattr, server, "should_exit", True)

    drain = Drain()
    app = create_app(settings, runtime, metrics, on_failure=exit_after_failure, drain=drain)
    config = uvicorn.Config(
        CloseWhileDraining(app, drain),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        proxy_headers=False,  # nothing here reads the client address: skip that middleware
    )
    server = DrainingServer(config, drain, settings.drain_s)
    server.run()
    if isinstance(failure, ContractError):  # the model itself: no restart would help
        log.error("%s%s", MODEL_BROKEN_LINE, failure)  # the last line, which the launcher repeats
        sys.exit(MODEL_BROKEN)
    if failure is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
