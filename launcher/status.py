"""The supervised processes' status, written as one JSON file the gateway shows in /gateway/info and /metrics.

The launcher rewrites the file on every change (a start, an exit, a restart
scheduled); the gateway reads it on request and never imports launcher code,
so the file is the whole interface::

    {"launcher_pid": 12, "updated_at": 1733300000.5,
     "processes": [{"name": "worker-0", "group": "worker", "model": "my-model", "state": "backing-off",
                    "pid": null, "restarts": 3, "fast_failures": 3, "last_exit_code": -9, "last_exit_at": 1733300000.4,
                    "backoff_s": 4.0}, ...]}

``model`` is the name of the model a worker (or its sidecar) serves when the launcher runs MODELS
(launcher/models.py), else null. ``state`` is ``running``, ``backing-off`` (waiting ``backoff_s`` before its
restart) or ``stopped``; ``last_exit_code`` is negative for a signal (-9: killed);
times are wall-clock seconds, for display. Written to a temporary file and
renamed over the old one, so a reader sees the old content or the new, never half.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

FILE_NAME = "processes.json"
#: The gateway's setting that names the file (gateway/settings.py).
STATUS_ENV = "LAUNCHER_STATUS_FILE"

State = Literal["running", "backing-off", "stopped"]


@dataclass
class ProcessStatus:
    name: str
    group: str
    #: The served model's name under MODELS (one pool per model); None for a single model or another process.
    model: str | None = None
    state: State = "stopped"
    pid: int | None = None
    restarts: int = 0
    #: Exits in a row, each soon after its start (a SIGKILL not counted); back to 0 once the process has run a while.
    fast_failures: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    #: The wait before the next start, while backing off.
    backoff_s: float | None = None


class StatusFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, processes: list[ProcessStatus]) -> None:
        """Replace the file's content at once; a failed write (a full disk) is skipped: the next change retries."""
        body = json.dumps({
            "launcher_pid": os.getpid(),
            "updated_at": time.time(),
            "processes": [asdict(process) for process in processes],
        })
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError:
            return
        try:
            with os.fdopen(handle, "w") as out:
                out.write(body)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def status_path(jobs_folder: Path) -> Path:
    """Where a stack's launcher writes the file: in its job folder."""
    return jobs_folder / FILE_NAME
