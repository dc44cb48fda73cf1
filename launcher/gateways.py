"""Several gateway processes on one listening socket, as gunicorn runs them in the images.

The launcher binds the socket once and every gateway process inherits it
(``LISTEN_FD``) and accepts on it: the kernel hands each new connection to one
of them, and while one restarts the others keep accepting, so nothing is
refused. Each process probes the workers itself and drains on SIGTERM like a
single gateway. With more than one, their Prometheus metrics go to files in one
folder (``PROMETHEUS_MULTIPROC_DIR``) and any process's /metrics adds them up,
as under gunicorn.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client import multiprocess

from gateway.settings import GatewaySettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def listen_socket(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, inheritable, with the gateway's own backlog setting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=GatewaySettings().backlog)
    sock.set_inheritable(True)
    return sock


def gateway_names(processes: int) -> list[str]:
    """``gateway`` for one process (the logs look as they always did), ``gateway-0`` .. otherwise."""
    return ["gateway"] if processes == 1 else [f"gateway-{i}" for i in range(processes)]


@contextlib.contextmanager
def metrics_folder(processes: int, environ: Mapping[str, str] = os.environ) -> Iterator[Path | None]:
    """The shared metrics folder of several processes: ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of the
    files a previous run left), else a temporary one removed afterwards; None for one process."""
    if processes == 1:
        yield None
        return
    given = environ.get(MULTIPROC_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="gateway-prometheus-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # only prometheus_client's own files: the folder may be the user's
        stale.unlink(missing_ok=True)
    try:
        yield folder
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def forget_process(folder: Path, pid: int) -> None:
    """Drop a dead process's live gauges (in flight and the like); its counters keep counting."""
    multiprocess.mark_process_dead(pid, str(folder))
