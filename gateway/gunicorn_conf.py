"""Gunicorn settings for the gateway in production (the container's command).

    gunicorn "gateway.app:create_app()" -k gateway.gunicorn_worker.GatewayWorker -c gateway/gunicorn_conf.py

(``-c python:gateway.gunicorn_conf`` loads the same file from the installed
package.) A gunicorn config file is where the process model is read from the
environment: ``HOST``, ``PORT``, ``GATEWAY_PROCESSES`` (gunicorn workers) and
``LOG_LEVEL``, and ``BACKLOG``; the app reads its own settings in ``create_app()``.
The worker (``gateway/gunicorn_worker.py``) is uvicorn's with the gateway's
header-limited HTTP protocol; it picks uvloop, both installed with the gateway.

Prometheus: with ``PROMETHEUS_MULTIPROC_DIR`` set, every process writes its
metrics to files there and /metrics adds them up. The folder is emptied when
the master starts (stale files from a previous run would be counted again) and
a dead worker's live gauges are dropped when it exits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("GATEWAY_PROCESSES", "1"))
worker_class = "gateway.gunicorn_worker.GatewayWorker"
# Connections the kernel holds until a worker accepts them (the gateway's BACKLOG setting).
backlog = int(os.environ.get("BACKLOG", "4096"))
loglevel = os.environ.get("LOG_LEVEL", "info")
# The app writes one JSON line per request; gunicorn's own access log would double it.
accesslog = None
errorlog = "-"
# SIGTERM: stop accepting, let in-flight requests finish for up to 10 s (the
# original template's grace), then exit. Compose's stop_grace_period is longer.
graceful_timeout = 10
timeout = 30
# Longer than the idle timeout of a load balancer in front is the usual advice;
# AWS ALB and nginx default to 60 s and 75 s upstream keep-alive.
keepalive = int(os.environ.get("GATEWAY_KEEPALIVE_S", "75"))
# Heartbeat files on tmpfs: a container's overlay /tmp can stall a worker's heartbeat.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Several processes need the multiprocess mode. It must be in the environment
# before prometheus_client is imported by the workers, hence here, at load time.
if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tempfile.gettempdir()) / "gateway-prometheus")


def _multiproc_dir() -> Path | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def on_starting(server: Any) -> None:
    """Create the metrics folder, or empty it of the files a previous run left."""
    path = _multiproc_dir()
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files: the folder is a setting, never rmtree it.
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def post_worker_init(worker: Any) -> None:
    """Gunicorn configures only its own loggers: set up the gateway's, as ``python -m gateway`` does."""
    from gateway.__main__ import configure_logging

    configure_logging(loglevel)


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (in flight and the like)."""
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
