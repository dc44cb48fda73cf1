"""The launcher's processes as it last wrote them (LAUNCHER_STATUS_FILE), for /gateway/info and /metrics.

The launcher (``make run``) restarts a process that exits, with backoff, and
rewrites one JSON file on every change; this module reads that file, on request
and at each scrape, and imports nothing of the launcher: the file is the whole
interface. A missing, unreadable or malformed file shows nothing, never an error
(the gateway also runs without the launcher, under gunicorn or in a cluster).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # NaN would make the answer itself fail


def read_processes(path: Path | None) -> list[dict[str, Any]] | None:
    """Each process's entry (name, group, state, pid, restarts, last exit code and time, backoff); None when
    there is no file to read or it does not hold a list of named entries."""
    if path is None:
        return None
    try:
        document = json.loads(path.read_bytes(), parse_constant=_refuse)
    except (OSError, ValueError):
        return None
    processes = document.get("processes") if isinstance(document, dict) else None
    if not isinstance(processes, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in processes
    ):
        return None
    return processes


class SupervisedCollector:
    """Prometheus collector of the launcher's processes, read from the file at each scrape."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        processes = read_processes(self._path)
        if processes is None:
            return
        restarts = CounterMetricFamily(
            "gateway_supervised_restarts", "Restarts of a process the launcher supervises.", labels=["process"]
        )
        up = GaugeMetricFamily(
            "gateway_supervised_up", "1 while a process the launcher supervises runs; 0 while it waits to restart.",
            labels=["process"],
        )
        for entry in processes:
            count = entry.get("restarts")
            restarts.add_metric([entry["name"]], count if isinstance(count, int) and count >= 0 else 0)
            up.add_metric([entry["name"]], 1 if entry.get("state") == "running" else 0)
        yield restarts
        yield up
